"""Run a recipe: baseline -> stages -> export -> measure on ONNX Runtime -> run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgeopt import __version__, distributed, interrupt
from edgeopt.atomic import write_text
from edgeopt.errors import OutputError
from edgeopt.progress import quiet
from edgeopt.recipes.journal import (
    Journal,
    check_recipe,
    disk_error,
    publish,
    recipe_key,
    scratch,
    scratch_path,
)
from edgeopt.recipes.schema import Recipe, Stage, load_recipe
from edgeopt.registry import Applied


@dataclasses.dataclass
class StageResult:
    """One row of metrics.json: what a stage produced, measured in ONNX Runtime."""

    name: str
    technique: str
    accuracy: float | None  # top-1 against the labels; None without class labels
    size_bytes: int
    latency_ms: float
    onnx: str
    stored_bytes: int | None  # weights losslessly compressed (sparsity, shared values, LZMA)
    params: int
    macs: int
    peak_activation_bytes: int | None
    metric: str = "top1"  # the recipe's metric; `score` is its value on the test split
    score: float | None = None
    speedup: dict[str, float] = dataclasses.field(default_factory=dict)
    accuracy_drop: float | None = None
    size_ratio: float | None = None
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)
    technique_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    profile_table: str = ""  # per-layer params / MACs as markdown, for summary.md
    warnings: list[str] = dataclasses.field(default_factory=list)
    target_fit: dict[str, Any] = dataclasses.field(default_factory=dict)  # recipe `target:`
    tflite: str | None = None  # recipe `export.tflite`: the stage's int8 .tflite, relative to the run folder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunResult:
    out_dir: Path
    stages: list[StageResult]
    recipe: Recipe

    @property
    def warnings(self) -> list[str]:
        return [f"{s.name}: {w}" for s in self.stages for w in s.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {"edgeopt_version": __version__, "model": self.recipe.model_label,
                "data": self.recipe.data_label, "recipe": self.recipe.to_dict(),
                "stages": [s.to_dict() for s in self.stages], "warnings": self.warnings,
                **_target_profile(self.recipe)}


def _target_profile(recipe: Recipe) -> dict[str, Any]:
    from edgeopt.deploy.targets import get_target

    return {"target": get_target(recipe.target).to_dict()} if recipe.target else {}


def run_recipe(recipe: str | Path | dict[str, Any] | None, out_dir: str | Path,
               *, progress: bool = True, resume: bool = False) -> RunResult:
    """Validate `recipe` completely, then run it and write the run folder `out_dir`.

    Every file is produced in a scratch folder beside `out_dir` (edgeopt.recipes.journal) and
    published in one rename only when the whole run succeeded, so a failed run leaves no
    half-written output. Finished stages and training epochs are kept there: with `resume`, a
    run of the same recipe continues from them.
    """
    parsed = load_recipe(recipe)
    out, rank = Path(out_dir), distributed.rank()
    if rank:  # under torchrun the other ranks train in step with rank 0 in a private folder
        out = out.with_name(f".{out.name}.rank{rank}")
    key = recipe_key(parsed.to_dict(), parsed.model_label, parsed.data_label)
    if resume and rank:  # as rank 0 does, or this rank would wait for a rank 0 that refused
        check_recipe(scratch_path(Path(out_dir)), key)
    # the other ranks' own folders are replaced by rank 0's (_follow_main)
    with scratch(out, key, resume and not rank) as journal, _disk_errors(journal.folder):
        if resume and distributed.active():
            _follow_main(journal, scratch_path(Path(out_dir)))
        with quiet(not progress):  # the techniques' own bars too
            stages = _execute(parsed, journal, progress)
        result = RunResult(out_dir=out, stages=stages, recipe=parsed)
        _write_outputs(result, journal.folder)
        interrupt.check()  # a swallowed Ctrl-C: keep the work for --resume, publish nothing
        publish(journal.folder, out)
    if rank:
        shutil.rmtree(out, ignore_errors=True)
    distributed.barrier()  # DIR is complete when any rank returns
    return result


def _follow_main(journal: Journal, main: Path) -> None:
    """`--resume` under torchrun: every rank continues from what rank 0 finished. The other
    ranks replace their private scratch folder with rank 0's (stage rows and weights, ONNX files,
    epoch checkpoints), so all of them skip the same stages and load the same epoch checkpoint
    (a rank killed a moment earlier than rank 0 would otherwise retrain alone and hang)."""
    distributed.barrier()  # rank 0 has claimed its folder (and recorded the recipe's key)
    rank = distributed.rank()
    seen = rank == 0 or (main / ".resume" / "run.json").is_file()
    if rank and seen:
        for item in journal.folder.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        for item in main.iterdir():
            if item.name not in (".publish", ".previous"):
                _copy(item, journal.folder / item.name)
    if distributed.sum_all([float(seen)])[0] < distributed.world_size():
        raise OutputError(f"--resume under torchrun: a rank does not see rank 0's work folder "
                          f"{str(main)!r}; resuming needs DIR on a disk every rank shares (one "
                          "machine, or a network file system). Rerun without --resume.")
    distributed.barrier()


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _disk_errors(folder: Path) -> Iterator[None]:
    """A full or read-only disk is the user's to fix: one clear OutputError, not a traceback."""
    try:
        yield
    except OSError as exc:
        error = disk_error(exc, folder)
        if error is None:
            raise
        raise error from None


def _execute(recipe: Recipe, journal: Journal, progress: bool) -> list[StageResult]:
    from edgeopt.recipes.baseline import load_baseline, load_splits, resolve_metric

    folder, done = journal.folder, journal.rows()
    splits = load_splits(recipe)
    _save_test_inputs(splits.test, folder)
    metric = resolve_metric(recipe, splits)
    with journal.checkpoints("baseline"):
        baseline = load_baseline(recipe, splits, progress)
    models: dict[str, nn.Module] = {"baseline": baseline}
    example = splits.test[0][0].unsqueeze(0)
    scorer = _Scorer(metric, splits.test, recipe.measure.threads)
    results = [_finished("baseline", "baseline", baseline, done, journal, scorer)
               or _measure_stage("baseline", "baseline", baseline, example, splits, recipe,
                                 folder, scorer)]
    _record(journal, "baseline", baseline, results, recipe)
    needed = _needed(recipe.stages, done)
    for index, stage in enumerate(recipe.stages):
        interrupt.check()
        row = done.get(stage.name)
        if row is not None and stage.name not in needed:
            results.append(_row(row))  # finished, and no later stage starts from its model
            continue
        with journal.checkpoints(stage.name), stage_seeded(recipe.seed, index):
            model, stats = _apply_stage(stage, models, splits, recipe, example, folder, row)
        models[stage.name] = model
        result = _finished(stage.name, stage.config.kind, model, done, journal, scorer)
        if result is None:
            result = _measure_stage(stage.name, stage.config.kind, model, example, splits,
                                    recipe, folder, scorer)
            result.technique_stats = {key: value.to_dict() for key, value in stats.items()}
        results.append(result)
        _record(journal, stage.name, model, results, recipe)
    _compare(results, folder, splits, recipe, progress)
    return results


def _needed(stages: tuple[Stage, ...], done: dict[str, Any]) -> set[str]:
    """Stages whose model a stage still to run (or to rebuild) starts from or learns from."""
    needed: set[str] = set()
    for stage in reversed(stages):
        if stage.name not in done or stage.name in needed:
            needed.add(stage.source)
            if getattr(stage.config, "needs_teacher", False):
                needed.add("baseline")
    return needed


def _finished(name: str, technique: str, model: nn.Module, done: dict[str, Any],
              journal: Journal, scorer: _Scorer) -> StageResult | None:
    """The recorded row of a stage an interrupted run finished; its rebuilt model gets the
    recorded weights. None when the stage has not finished."""
    row = done.get(name)
    if row is None:
        return None
    journal.restore(name, model)
    if name == "baseline" and scorer.metric != "top1":
        scorer(journal.folder / row["onnx"])  # the reference the later stages are scored against
    return _row(row)


def _row(row: dict[str, Any]) -> StageResult:
    return StageResult(**row)


def _record(journal: Journal, name: str, model: nn.Module, results: list[StageResult],
            recipe: Recipe) -> None:
    """Persist a finished stage, and metrics.json so far (`edgeopt report` on a failed run)."""
    if not (journal.stages / f"{name}.json").is_file():
        journal.finish(name, model, results[-1].to_dict())
    partial = RunResult(out_dir=journal.folder, stages=results, recipe=recipe)
    write_text(journal.folder / "metrics.json",
               json.dumps(partial.to_dict(), indent=2, default=str))


@contextlib.contextmanager
def stage_seeded(seed: int, index: int) -> Iterator[None]:
    """Each stage starts from its own seed: a resumed run that skips earlier stages draws the
    same random numbers as an uninterrupted one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1009 + index + 1)
        yield


class _Scorer:
    """Scores each stage's ONNX file with the recipe metric; the first file scored (the
    baseline) is the reference for agreement, cosine and mse."""

    def __init__(self, metric: str, test: Any, threads: int) -> None:
        self.metric, self.test, self.threads = metric, test, threads
        self.reference: Any = None

    def __call__(self, path: Path) -> float:
        from edgeopt.runtime.measure import predict
        from edgeopt.runtime.scores import score

        outputs, labels = predict(path, self.test, threads=self.threads)
        if self.reference is None:
            self.reference = outputs
        return score(self.metric, outputs, self.reference, labels)

    @property
    def labeled_test(self) -> Any:
        """The test split as measure() takes it: without labels unless they are classes."""
        from torch.utils.data import TensorDataset

        sample = self.test[0]
        if len(sample) > 1 and sample[1].dtype == torch.int64 and sample[1].dim() == 0:
            return self.test
        return TensorDataset(self.test.tensors[0])


def _apply_stage(stage: Stage, models: dict[str, nn.Module], splits: Any, recipe: Recipe,
                 example: torch.Tensor, folder: Path, row: dict[str, Any] | None) -> Applied:
    """The stage's model; `row`: the stage finished before, rebuild it as it was."""
    from edgeopt.api import apply_with_stats

    data = splits.train if stage.data == "train" else splits.val
    source = models[stage.source]
    placements = stage.config.placements() if hasattr(stage.config, "placements") else {}
    chosen = ((row or {}).get("technique_stats", {}).get("speed") or {}).get("chosen")
    if stage.speed_guard and chosen in placements:  # the placement the speed guard chose
        return apply_with_stats(source, placements[chosen], data=data)
    if stage.speed_guard and len(placements) > 1:
        from edgeopt.recipes.speed import fastest_placement

        # the source stage's ONNX file is already in the run folder: time against that
        applied, choice = fastest_placement(source, folder / f"{stage.source}.onnx", placements,
                                            data, example, splits.val,
                                            threads=recipe.measure.threads,
                                            rounds=recipe.measure.runs)
        return Applied(applied.model, {**applied.stats, "speed": choice})
    kwargs: dict[str, Any] = {"data": data}
    if getattr(stage.config, "needs_teacher", False):
        kwargs["teacher"] = models["baseline"]
    return apply_with_stats(source, stage.config, **kwargs)


def _measure_stage(name: str, technique: str, model: nn.Module, example: torch.Tensor,
                   splits: Any, recipe: Recipe, folder: Path, scorer: _Scorer) -> StageResult:
    from edgeopt.export.onnx import export_onnx
    from edgeopt.profile import profile
    from edgeopt.runtime.measure import measure
    from edgeopt.storage import stored_size

    path = export_onnx(model, folder / f"{name}.onnx", example, opset=recipe.opset)
    m = measure(path, scorer.labeled_test, threads=recipe.measure.threads,
                warmup=recipe.measure.warmup, runs=recipe.measure.runs)
    score = m.accuracy if scorer.metric == "top1" else scorer(path)
    prof = profile(model, example, onnx_path=path)
    tflite, warnings = _write_tflite(path, recipe, integer=bool(m.int8_ops))
    return StageResult(
        name=name, technique=technique, accuracy=m.accuracy, metric=scorer.metric, score=score,
        size_bytes=m.size_bytes,
        latency_ms=m.latency_ms, onnx=path.name, stored_bytes=stored_size(path).total_bytes,
        params=prof.params, macs=prof.macs,
        peak_activation_bytes=prof.peak_activation_bytes,
        runtime={**m.to_dict(), "path": path.name},  # relative to the run folder
        profile_table=prof.to_markdown(), target_fit=_target_fit(path, recipe), tflite=tflite,
        warnings=warnings)


def _write_tflite(path: Path, recipe: Recipe, integer: bool) -> tuple[str | None, list[str]]:
    """`export.tflite`: an int8 stage's ONNX file lowered and written as <stage>.tflite beside it
    (float stages have none); a stage that does not lower says why instead."""
    if not recipe.tflite or not integer:
        return None, []
    from edgeopt.atomic import write_bytes
    from edgeopt.deploy.lower import lower_onnx
    from edgeopt.errors import ExportError
    from edgeopt.export.tflite import graph_to_tflite

    try:
        data = graph_to_tflite(lower_onnx(path))
    except ExportError as exc:
        return None, [f"no .tflite: {exc}"]
    return write_bytes(path.with_suffix(".tflite"), data).name, []


def _target_fit(path: Path, recipe: Recipe) -> dict[str, Any]:
    """Whether the stage fits the recipe's target: flash and RAM estimated from its lowered
    integer graph (edgeopt.deploy.budget); {} without a target."""
    if recipe.target is None:
        return {}
    from edgeopt.deploy.budget import stage_fit
    from edgeopt.deploy.targets import get_target

    return stage_fit(path, get_target(recipe.target))


def _save_test_inputs(test: Any, folder: Path, limit: int = 100,
                      max_bytes: int = 4 << 20) -> None:
    """test_inputs.npz: the first test samples (x, and y when labeled), so `edgeopt deploy`
    runs the run's own inputs on a target without the data source; at most ~4 MB."""
    import numpy as np

    x = test.tensors[0]
    count = max(1, min(limit, len(x), max_bytes // max(1, x[0].numel() * 4)))
    arrays = {"x": x[:count].float().numpy()}
    if len(test.tensors) > 1:
        arrays["y"] = test.tensors[1][:count].numpy()
    np.savez_compressed(folder / "test_inputs.npz", **arrays)


def _compare(results: list[StageResult], folder: Path, splits: Any, recipe: Recipe,
             progress: bool) -> None:
    """Latency ratios measured side by side (interleaved) and plain warnings where gains fail."""
    from edgeopt.runtime.measure import compare_latency

    base = results[0]
    paths = [folder / r.onnx for r in results]
    threads_timed = dict.fromkeys((recipe.measure.threads, *recipe.measure.speed_threads))
    for threads in threads_timed:
        medians = compare_latency(paths, splits.test, threads=threads,
                                  rounds=recipe.measure.runs, progress=progress)
        for result, median in zip(results, medians):
            if threads in recipe.measure.speed_threads:
                result.speedup[f"{threads}t"] = medians[0] / median
            if threads == recipe.measure.threads:
                # the latency shown is from the same interleaved rounds as the speedups
                result.latency_ms = median
    budget = recipe.measure.accuracy_budget
    for r in results[1:]:
        r.size_ratio = base.size_bytes / r.size_bytes
        if r.score is not None and base.score is not None and r.metric != "mse":
            r.accuracy_drop = 100.0 * (base.score - r.score)  # points of the recipe metric
            if r.accuracy_drop > budget:
                what = "accuracy" if r.metric == "top1" else r.metric
                r.warnings.append(f"{what} dropped {r.accuracy_drop:.2f} points "
                                  f"(budget {budget:g}).")
        for key, ratio in r.speedup.items():
            if ratio < 1.0:
                r.warnings.append(f"not faster than baseline at {key[:-1]} thread(s): "
                                  f"{ratio:.2f}x the baseline's speed.")
        if r.size_ratio < 1.0:
            r.warnings.append(f"larger than baseline ({r.size_ratio:.2f}x).")
        if "quant" in r.technique_stats and not r.runtime.get("runs_int8"):
            r.warnings.append("ONNX Runtime does not run this model on int8 kernels.")


def _write_outputs(result: RunResult, folder: Path) -> None:
    from edgeopt.recipes.summary import render_summary
    from edgeopt.report import write_report

    write_text(folder / "metrics.json", json.dumps(result.to_dict(), indent=2, default=str))
    write_text(folder / "summary.md", render_summary(result))
    write_report(result.to_dict(), folder / "report.html")
