"""Budget-aware compression search on Optuna.

    result = edgeopt.search.search("recipe.yaml", target="cortex-m4", flash="64KiB",
                                   trials=40, out_dir="runs/search")

Each trial picks a weight bit width per layer, a channel keep ratio per group, a low-rank
energy and (MCU targets) weight clustering, predicts flash / RAM / latency
(edgeopt.search.cost), and, when the policy fits, applies it (channel pruning, low-rank
factorization, clustering, then quantization with short recovery training on a training subset;
edgeopt.search.space.policy_stages) and scores it on the validation split. `out_dir` gets
pareto.json, report.html and best/ (the best fitting policy run as a normal recipe and measured
on the test split).

With `SearchSettings(level="architecture")` (or "both") trials vary the architecture of the
recipe's zoo family instead (edgeopt.search.architecture): TinyNAS-style space selection, then
candidates trained from scratch and quantized.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeopt import interrupt
from edgeopt.errors import invalid
from edgeopt.search.budget import Budget, check_storage, make_budget, parse_bytes
from edgeopt.search.space import Policy, Space, policy_stages
from edgeopt.search.study import SearchSettings

__all__ = ["Budget", "Policy", "SearchSettings", "Space", "check_storage", "make_budget",
           "parse_bytes", "policy_stages", "search"]


def _check(trials: int, timeout: float | None, settings: SearchSettings) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise invalid("--trials", "an int >= 1", trials)
    if timeout is not None and not timeout > 0:
        raise invalid("--timeout", "a positive number of seconds", timeout)
    if settings.finetune_samples < 1:
        raise invalid("--finetune-samples", "an int >= 1", settings.finetune_samples)
    if settings.sampler not in ("tpe", "nsga2"):
        raise invalid("--sampler", "'tpe' or 'nsga2'", settings.sampler)
    for option, value in (("--arch-epochs", settings.arch_epochs),
                          ("--space-samples", settings.space_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(option, "an int >= 1", value)
    if settings.threads is not None and (isinstance(settings.threads, bool)
                                         or not isinstance(settings.threads, int)
                                         or settings.threads < 1):
        raise invalid("--threads", "an int >= 1", settings.threads)


def search(recipe: str | Path | dict[str, Any] | None, *, target: str, out_dir: str | Path,
           trials: int, flash: str | int | None = None, ram: str | int | None = None,
           latency_ms: float | None = None, timeout: float | None = None,
           storage: str | None = None, settings: SearchSettings | None = None,
           progress: bool = True, clock_mhz: float | None = None,
           cpi: float | None = None) -> dict[str, Any]:
    """Run (or resume, or join) a search; returns what pareto.json holds. On an MCU target
    latency_ms is predicted instructions × `cpi` / `clock_mhz` (the target's assumptions by
    default: edgeopt.deploy.targets)."""
    from edgeopt.atomic import atomic_dir, ensure_writable_dir
    from edgeopt.progress import quiet
    from edgeopt.pruning.graph import reuse_graphs
    from edgeopt.recipes.schema import load_recipe
    from edgeopt.search import output, seeds
    from edgeopt.search.architecture import architecture_context, check_level, seed_architecture
    from edgeopt.search.architecture import run_best as run_best_architecture
    from edgeopt.search.study import make_study, run_trials, seed_uniform

    settings = settings or SearchSettings()
    _check(trials, timeout, settings)
    budget = make_budget(target, flash, ram, latency_ms, clock_mhz, cpi)
    storage = check_storage(storage)
    parsed = load_recipe(recipe)
    check_level(parsed, settings.level)
    ensure_writable_dir(Path(out_dir).resolve().parent)
    if settings.threads is not None:  # workers sharing a machine: one thread each, not all cores
        import torch

        torch.set_num_threads(settings.threads)
    # every trial prunes a copy of one model: trace its structure once
    with reuse_graphs(), quiet(not progress):
        ctx = _context(parsed, budget, settings, progress)
        spaces = None  # the architecture level's space selection table
        if settings.level != "policy":
            ctx, spaces = architecture_context(parsed, ctx)
        study = make_study(settings, ctx.objectives, storage)
        if spaces is not None:  # a first architecture; seed_uniform then finds the study begun
            seed_architecture(study, parsed.model, spaces)
        seed_uniform(study, ctx.space, storage, lambda: seeds.budget_guided(ctx))
        run_trials(study, ctx, trials, timeout, progress)
    interrupt.check()  # a swallowed Ctrl-C: the trials are kept in the storage, no output
    records = output.trial_records(study)
    with atomic_dir(out_dir) as folder:
        best = output.best_fitting_record(records)
        best_run = None
        if best is not None and settings.run_best:
            if spaces is None:
                best_run = _run_best(parsed, best, budget, settings, folder, progress, ctx.metric)
            else:
                best_run = run_best_architecture(parsed, best, budget, settings, folder, progress)
        content = output.summary(records, budget.to_dict(), best_run, ctx.objectives,
                                 ctx.metric)
        if spaces is not None:
            content["architecture"] = {"level": settings.level, "family": parsed.model,
                                       "spaces": spaces}
        output.write_pareto(folder, content)
        output.write_report(folder, content, f"edgeopt search: {parsed.model_label} on "
                            f"{parsed.data_label}, {budget.target}")
    return content


def _context(parsed: Any, budget: Budget, settings: SearchSettings, progress: bool) -> Any:
    import torch

    from edgeopt.recipes.baseline import load_baseline, load_splits, resolve_metric
    from edgeopt.search.cost import FormulaCost, latency_for
    from edgeopt.search.space import build_space
    from edgeopt.search.study import OBJECTIVES, Context
    from edgeopt.training import predict_logits

    splits = load_splits(parsed)
    metric = resolve_metric(parsed, splits)
    if metric == "mse":
        raise invalid("recipe.metric", "top1, agreement or cosine for a search (it maximizes "
                      "the score; mse is lower-is-better)", metric)
    example = splits.test[0][0].unsqueeze(0)
    latency = latency_for(budget, example)
    if budget.latency_ms is not None and latency is None:
        raise invalid("--latency-ms", f"a target with an instruction table; {budget.target} has "
                      "none (python -m edgeopt.search.mcufit --target "
                      f"{budget.target} fits one)", budget.latency_ms)
    base = load_baseline(parsed, splits, progress).eval()
    reference = None if metric == "top1" else predict_logits(base, splits.val).numpy()
    generator = torch.Generator().manual_seed(settings.seed)
    # all of the training split when it is no larger (then best/ trains on exactly the data its
    # trial did), else a seeded sample of it in the split's order
    train = splits.train
    if settings.finetune_samples < len(splits.train):
        indices = torch.randperm(len(splits.train), generator=generator)
        train = torch.utils.data.Subset(splits.train,
                                        sorted(indices[:settings.finetune_samples].tolist()))
    # on an MCU latency is recorded always, an objective only under a latency budget (a study
    # begun without one keeps its objectives when resumed)
    timed = latency is not None and (budget.kind == "host" or budget.latency_ms is not None)
    objectives = tuple(k for k in OBJECTIVES if k != "latency_ms" or timed)
    space = build_space(base, example, budget.kind)
    if budget.latency_ms is not None:  # clustered layers' decoding has no instruction model
        space = dataclasses.replace(space, cluster_choices=(0,))
    return Context(base=base, splits=splits, train=train, example=example,
                   space=space, budget=budget,
                   cost=FormulaCost(example, latency), settings=settings, objectives=objectives,
                   metric=metric, reference=reference, recipe_seed=parsed.seed)


def _run_best(parsed: Any, best: dict[str, Any], budget: Budget, settings: SearchSettings,
              folder: Path, progress: bool, metric: str = "top1") -> dict[str, Any]:
    """The best policy as a recipe, run and measured on the test split in `folder/best`."""
    from edgeopt.recipes.run import run_recipe
    from edgeopt.recipes.schema import parse_recipe

    policy = Policy.from_dict(best["policy"])
    recipe = {**parsed.source, "stages": policy_stages(policy, settings.epochs, metric),
              "target": budget.target}
    # paths in the user's recipe stay relative to its own folder, not to the cwd
    result = run_recipe(parse_recipe(recipe, root=parsed.root), folder / "best",
                        progress=progress)
    stage = result.stages[-1]  # its score is the recipe's metric (top-1 accuracy by default)
    return {"run": "best", "test_accuracy": stage.score, "onnx_size_bytes": stage.size_bytes,
            "onnx_latency_ms": stage.latency_ms}
