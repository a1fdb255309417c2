"""The pruning handler: validate, (regularize), prune on a schedule, fine-tune, record stats.

    pruned, stats = eo.apply_with_stats(model, eo.PruneConfig(sparsity=0.5, structure="channel"),
                                        data=train)
    stats["prune"].to_dict()      # per-layer sparsity, params / MACs, rounds

The input model is never modified. Unstructured and N:M pruning return the same architecture
with zeros baked into the weights; channel / head pruning returns physically smaller layers;
layer pruning replaces residual blocks by `Bypass` modules.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from edgeopt.data import holdout, iter_batches
from edgeopt.errors import ConfigTypeError, DataError, ModelError
from edgeopt.pruning.common import example_batch, prunable_weights
from edgeopt.pruning.config import (
    CHANNEL_STRUCTURES,
    Criterion,
    PruneConfig,
    Regularization,
    Rewind,
    Schedule,
    Structure,
)
from edgeopt.pruning.importance import LABELED_NEEDS, NEEDS
from edgeopt.pruning.pruners import Pruner, make_pruner
from edgeopt.pruning.regularization import group_lasso_penalty, l1_penalty, penalized
from edgeopt.pruning.schedules import finetune, polynomial_sparsity, round_sparsities
from edgeopt.pruning.sensitivity import sensitivity_analysis
from edgeopt.pruning.signals import recalibrate_batch_norm
from edgeopt.pruning.stats import PruneStats, finish_stats, snapshot
from edgeopt.registry import Applied, register
from edgeopt.training import evaluate


@dataclasses.dataclass
class Context:
    """What one pruning run works with."""

    config: PruneConfig
    data: Any  # everything given (importance statistics)
    train: Any  # fine-tuning part
    val: Any  # early stopping / trend part (None: not tracked)
    example: torch.Tensor | None
    stats: PruneStats


def check_inputs(model: Any, config: Any, data: Any) -> None:
    """Refuse, before any work, what cannot run: wrong types, missing data."""
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(config, PruneConfig):
        raise ConfigTypeError(f"config must be a PruneConfig; got {type(config).__name__}.")
    if data is not None:
        _check_labels(config, data)
        return
    needs = []
    if config.structure in CHANNEL_STRUCTURES or config.structure is Structure.LAYER:
        needs.append(f"structure={config.structure.value!r} traces the model on one batch")
    need = NEEDS.get(config.criterion.value)
    if need is not None:
        needs.append(f"criterion={config.criterion.value!r} reads {need.replace('_', ' ')}")
    if config.finetune_epochs or config.reg_epochs:
        needs.append("fine-tuning / regularized training needs labeled batches")
    if needs:
        raise DataError(f"PruneConfig needs data: {'; '.join(needs)}. Pass data=... "
                        "(a Dataset, DataLoader or list of (inputs, targets) batches).")


def _check_labels(config: PruneConfig, data: Any) -> None:
    """Training and gradient criteria need targets: look at the first batch before any work."""
    wanted = (config.finetune_epochs or config.reg_epochs
              or NEEDS.get(config.criterion.value) in LABELED_NEEDS)
    if not wanted or isinstance(data, Iterator):
        return
    for _, targets in iter_batches(data, what="data"):
        if targets is None:
            raise DataError(
                f"PruneConfig (criterion={config.criterion.value!r}, finetune_epochs="
                f"{config.finetune_epochs}, reg_epochs={config.reg_epochs}) needs labeled data; "
                "data has no targets. Give (inputs, targets) batches.")
        return


@register(PruneConfig)
def prune(model: nn.Module, config: PruneConfig, data: Any = None, *,
          val_data: Any = None) -> Applied:
    """Prune a copy of `model` as `config` says; `val_data` (optional) replaces the held-out
    part of `data` for early stopping, the accuracy trend and sensitivity analysis."""
    check_inputs(model, config, data)
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    ctx = _context(model, config, data, val_data)
    pruner = make_pruner(model, config, ctx.data, ctx.example)  # checks layers before work
    before = snapshot(model, ctx.example)
    if config.regularization is not Regularization.NONE:
        _regularize(model, ctx)
    if config.criterion is Criterion.SENSITIVITY:
        pruner.plan = _plan(model, ctx)
    runner = {Schedule.ONE_SHOT: _one_shot, Schedule.ITERATIVE: _iterative,
              Schedule.POLYNOMIAL: _polynomial}[config.schedule]
    if config.rewind is not Rewind.NONE:
        runner = _lottery
    runner(model, pruner, ctx)
    pruner.record(ctx.stats)
    finish_stats(ctx.stats, before, model, ctx.example, config.exclude)
    ctx.stats.seconds = time.perf_counter() - start
    return Applied(model.eval(), {"prune": ctx.stats})


def _context(model: nn.Module, config: PruneConfig, data: Any, val_data: Any) -> Context:
    needs_val = (config.finetune_epochs > 0 or config.reg_epochs > 0
                 or config.criterion is Criterion.SENSITIVITY)
    train, val = data, val_data
    if needs_val and val is None and data is not None:
        train, val = holdout(data, config.advanced.val_fraction, config.advanced.seed)
    stats = PruneStats(structure=config.structure.value, criterion=config.criterion.value,
                       scope=config.scope.value, schedule=config.schedule.value,
                       target_sparsity=config.sparsity)
    example = example_batch(data) if data is not None else None
    return Context(config, train if data is not None else None, train, val, example, stats)


def _finetune(model: nn.Module, pruner: Pruner, ctx: Context, epochs: int, desc: str,
              keep_best: bool = True, on_epoch: Any = None) -> Any:
    adv = ctx.config.advanced
    return finetune(model, ctx.train, ctx.val, epochs=epochs, lr=ctx.config.lr,
                    patience=adv.patience, batch_size=adv.batch_size, seed=adv.seed,
                    after_step=pruner.after_step(), keep_best=keep_best, on_epoch=on_epoch,
                    progress=adv.progress, desc=desc)


def _round(model: nn.Module, ctx: Context, index: int, sparsity: float, result: Any) -> None:
    """One entry of the sparsity / accuracy trend."""
    acc = result.best if result is not None and result.best is not None else (
        evaluate(model, ctx.val) if ctx.val is not None else None)
    ctx.stats.rounds.append({
        "round": index, "sparsity": sparsity, "accuracy": acc,
        "params": sum(p.numel() for p in model.parameters()),
        "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
        "epochs": result.epochs if result is not None else 0,
        "best_epoch": result.best_epoch if result is not None else None,
        "seconds": result.seconds if result is not None else 0.0,
    })


def _recalibrate(model: nn.Module, ctx: Context) -> None:
    adv = ctx.config.advanced
    recalibrate_batch_norm(model, ctx.data, batches=adv.bn_batches, batch_size=adv.batch_size)


def _one_shot(model: nn.Module, pruner: Pruner, ctx: Context) -> None:
    pruner.step(model, ctx.config.sparsity)
    _recalibrate(model, ctx)
    result = None
    if ctx.config.finetune_epochs:
        result = _finetune(model, pruner, ctx, ctx.config.finetune_epochs, "finetune")
    _round(model, ctx, 1, ctx.config.sparsity, result)


def _iterative(model: nn.Module, pruner: Pruner, ctx: Context) -> None:
    targets = round_sparsities(ctx.config.sparsity, ctx.config.steps)
    for index, sparsity in enumerate(targets, start=1):
        pruner.step(model, sparsity)
        _recalibrate(model, ctx)
        result = None
        if ctx.config.finetune_epochs:
            result = _finetune(model, pruner, ctx, ctx.config.finetune_epochs,
                               f"round {index}/{len(targets)}")
        _round(model, ctx, index, sparsity, result)


def _polynomial(model: nn.Module, pruner: Pruner, ctx: Context) -> None:
    """Cubic ramp over the first `polynomial_end` of fine-tuning (masks updated every
    `prune_every` steps), then the rest of the epochs with the final masks."""
    config, adv = ctx.config, ctx.config.advanced
    ramp_epochs = max(1, math.ceil(config.finetune_epochs * adv.polynomial_end))
    steps_per_epoch = max(1, _count_batches(ctx.train, adv.batch_size))
    total = ramp_epochs * steps_per_epoch
    state = {"step": 0, "sparsity": 0.0}

    def ramp(m: nn.Module) -> None:
        state["step"] += 1
        if state["step"] % adv.prune_every == 0 or state["step"] == total:
            target = polynomial_sparsity(config.sparsity, state["step"] / total)
            if target > state["sparsity"]:
                pruner.soft(m, target)
                state["sparsity"] = target

    def on_epoch(epoch: int, acc: float | None) -> None:
        ctx.stats.rounds.append({"round": epoch + 1, "sparsity": state["sparsity"],
                                 "accuracy": acc, "epochs": 1})

    pruner.extra_hook = ramp
    _finetune(model, pruner, ctx, ramp_epochs, "gradual pruning", keep_best=False,
              on_epoch=on_epoch)
    pruner.extra_hook = None
    pruner.soft(model, config.sparsity)
    pruner.finish(model)
    _recalibrate(model, ctx)
    rest = config.finetune_epochs - ramp_epochs
    result = _finetune(model, pruner, ctx, rest, "finetune") if rest > 0 else None
    _round(model, ctx, len(ctx.stats.rounds) + 1, config.sparsity, result)


def _count_batches(data: Any, batch_size: int) -> int:
    try:
        if isinstance(data, torch.utils.data.DataLoader):
            return len(data)
        if isinstance(data, torch.utils.data.Dataset):
            return math.ceil(len(data) / batch_size)  # type: ignore[arg-type]
        return len(data)
    except TypeError:
        return 1


def _lottery(model: nn.Module, pruner: Pruner, ctx: Context) -> None:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019): train, prune,
    rewind the surviving weights, retrain; round 0 is the dense network."""
    config = ctx.config
    saved: dict[str, Any] = {"state": copy.deepcopy(model.state_dict())}
    if config.rewind is Rewind.EARLY:
        pruner.extra_hook = _saver(saved, config.advanced.rewind_steps)
    result = _finetune(model, pruner, ctx, config.finetune_epochs, "dense")
    pruner.extra_hook = None
    _round(model, ctx, 0, 0.0, result)
    for index, sparsity in enumerate(round_sparsities(config.sparsity, config.steps), start=1):
        pruner.step(model, sparsity)
        model.load_state_dict(saved["state"])
        pruner.after_step()(model)  # re-apply the masks to the rewound weights
        result = _finetune(model, pruner, ctx, config.finetune_epochs, f"ticket {index}")
        _round(model, ctx, index, sparsity, result)


def _saver(saved: dict[str, Any], steps: int) -> Any:
    count = {"n": 0}

    def hook(model: nn.Module) -> None:
        count["n"] += 1
        if count["n"] == steps:
            saved["state"] = copy.deepcopy(model.state_dict())

    return hook


def _regularize(model: nn.Module, ctx: Context) -> None:
    """Train `reg_epochs` with an L1 or group-lasso penalty before pruning."""
    from edgeopt.pruning.graph import build_graph

    config = ctx.config
    if config.regularization is Regularization.L1:
        weights = prunable_weights(model, config.exclude)

        def penalty() -> torch.Tensor:
            return l1_penalty(weights)
    else:
        if ctx.example is None:
            raise DataError("group-lasso regularization needs data to trace the model.")
        graph = build_graph(model, ctx.example)
        params = dict(model.named_parameters(remove_duplicate=False))

        def penalty() -> torch.Tensor:
            return group_lasso_penalty(params, graph)
    adv = config.advanced
    result = finetune(model, ctx.train, ctx.val, epochs=config.reg_epochs, lr=config.lr,
                      patience=config.reg_epochs, batch_size=adv.batch_size, seed=adv.seed,
                      loss=penalized(penalty, config.reg_strength), progress=adv.progress,
                      desc=f"{config.regularization.value} regularization")
    ctx.stats.regularization = {"kind": config.regularization.value, "epochs": result.epochs,
                                "strength": config.reg_strength, "val_accuracy": result.best}


def _plan(model: nn.Module, ctx: Context) -> dict[str, float]:
    config = ctx.config
    if config.structure is Structure.LAYER:
        return {}
    structure = "unstructured" if config.structure in (Structure.UNSTRUCTURED, Structure.NM) \
        else "channel"
    data = ctx.val if ctx.val is not None else ctx.data
    curves = sensitivity_analysis(model, data, structure=structure,
                                  levels=config.advanced.sensitivity_levels,
                                  batches=config.advanced.sensitivity_batches,
                                  exclude=config.exclude,
                                  max_sparsity=config.advanced.max_layer_sparsity)
    plan = curves.plan(config.sparsity)
    ctx.stats.plan = plan
    ctx.stats.sensitivity_curves = curves.to_dict()
    ctx.stats.sensitivity = [
        {"name": name, "accuracy_drop": 100.0 * (curves.baseline - points[-1]),
         "at_sparsity": curves.levels[-1], "planned_sparsity": plan.get(name, 0.0)}
        for name, points in curves.curves.items()]
    if not plan:
        raise ModelError("sensitivity analysis found no prunable layer (check exclude).")
    return plan
