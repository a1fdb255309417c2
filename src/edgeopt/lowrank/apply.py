"""The low-rank handler: pick layers, choose ranks, keep only factorizations that save both
parameters and MACs, swap them in, optionally fine-tune, and record per-layer statistics."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import time
from typing import Any

import torch
from torch import nn

from edgeopt.data import iter_batches
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.lowrank.config import LowRankConfig, Selection
from edgeopt.lowrank.layers import Decomposer, Factorized, count_macs, decomposer_for
from edgeopt.lowrank.primitives import energy_kept
from edgeopt.registry import Applied, register
from edgeopt.surgery import set_submodule
from edgeopt.training import evaluate, fit

_SYNTHETIC_EXTENT = 32  # spatial / temporal size of the stand-in input when no data is given


@dataclasses.dataclass
class LayerPlan:
    """One candidate layer: the rank tried, what it would cost, and whether it was replaced."""

    name: str
    type: str
    method: str
    rank: Any
    max_rank: int
    energy_kept: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    replaced: bool
    reason: str
    accuracy_drop: float | None = None  # selection="sensitivity" only


@dataclasses.dataclass
class LowRankStats:
    """What factorization did, per layer and in total, for the report."""

    method: str
    selection: str
    layers: list[LayerPlan]
    skipped: dict[str, str]  # layer -> why it was not a candidate
    params_before: int  # whole model
    params_after: int
    macs_before: int  # candidate layers only, per sample
    macs_after: int
    macs_input: str  # "data sample" or "synthetic <shape>": where the MAC counts come from
    finetune_loss: list[float]
    seconds: float

    @property
    def replaced(self) -> list[str]:
        return [p.name for p in self.layers if p.replaced]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "replaced": self.replaced}


@register(LowRankConfig)
def factorize(model: nn.Module, config: LowRankConfig, *, data: Any = None) -> Applied:
    """Return a copy of `model` with low-rank factorized layers (the input is not modified)."""
    selection = config.rank_selection
    if data is None and (selection is Selection.SENSITIVITY or config.finetune_epochs):
        why = "selection='sensitivity'" if selection is Selection.SENSITIVITY else (
            "finetune_epochs > 0")
        raise DataError(f"LowRankConfig with {why} needs labeled data; pass data=<train split>.")
    start = time.perf_counter()
    out = copy.deepcopy(model).eval()
    candidates, skipped = _candidates(out, config)
    if selection is Selection.RANK:
        _check_fixed_rank(candidates, config)
    shapes, macs_input = _input_shapes(out, candidates, data)
    if selection is Selection.SENSITIVITY:
        planned = _sensitivity_plans(out, candidates, shapes, config, data)
    else:
        planned = [_plan(name, layer, dec, shapes[name], _rank(layer, dec, config), config)
                   for name, layer, dec in candidates]
    for plan, module in planned:
        if plan.replaced:
            set_submodule(out, plan.name, module)
    plans = [plan for plan, _ in planned]
    history = fit(out, data, epochs=config.finetune_epochs, lr=config.lr,
                  batch_size=config.batch_size, seed=config.seed,
                  desc="fine-tune (low-rank)") if config.finetune_epochs else None
    stats = LowRankStats(
        method=config.method.value, selection=selection.value, layers=plans, skipped=skipped,
        params_before=_params(model), params_after=_params(out),
        macs_before=sum(p.macs_before for p in plans),
        macs_after=sum(p.macs_after if p.replaced else p.macs_before for p in plans),
        macs_input=macs_input, finetune_loss=history.train_loss if history else [],
        seconds=time.perf_counter() - start)
    return Applied(out.eval(), {"lowrank": stats})


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _candidates(model: nn.Module, config: LowRankConfig
                ) -> tuple[list[tuple[str, nn.Module, Decomposer]], dict[str, str]]:
    chosen, skipped = [], {}
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            continue
        if not name:
            raise ModelError("the model is a single layer; wrap it (nn.Sequential(layer)) so "
                             "it can be replaced by its factors.")
        if any(isinstance(p, Factorized) for p in _parents(model, name)):
            skipped[name] = "already factorized"
            continue
        if config.layers and not any(fnmatch.fnmatchcase(name, p) for p in config.layers):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            skipped[name] = "excluded"
            continue
        decomposer = decomposer_for(layer, config.method.value)
        if decomposer is None:
            skipped[name] = f"{type(layer).__name__} with groups={getattr(layer, 'groups', 1)} " \
                            f"/ padding_mode={getattr(layer, 'padding_mode', '-')} not supported"
            continue
        chosen.append((name, layer, decomposer))
    if not chosen:
        raise ModelError(f"no layer to factorize with method={config.method.value!r} "
                         f"(layers={list(config.layers)}, exclude={list(config.exclude)}; "
                         f"skipped: {skipped or 'none'}).")
    return chosen, skipped


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def _check_fixed_rank(candidates: list[tuple[str, nn.Module, Decomposer]],
                      config: LowRankConfig) -> None:
    """A fixed rank above what a layer allows is an error, before any decomposition."""
    too_big = {n: d.max_rank(layer.weight) for n, layer, d in candidates
               if config.rank > d.max_rank(layer.weight)}
    if too_big:
        listed = ", ".join(f"{n} (max {m})" for n, m in too_big.items())
        raise ConfigError(
            f"LowRankConfig.rank={config.rank} is larger than these layers allow for "
            f"method={config.method.value!r}: {listed}; choose rank <= {min(too_big.values())}, "
            "exclude those layers (exclude=[...]) or select ranks by energy.")


def _input_shapes(model: nn.Module, candidates: list[tuple[str, nn.Module, Decomposer]],
                  data: Any) -> tuple[dict[str, tuple[int, ...]], str]:
    """Per-sample input shape of each candidate: from one data sample, else a stand-in."""
    if data is None:
        shapes = {}
        for name, layer, _ in candidates:
            if isinstance(layer, nn.Linear):
                shapes[name] = (layer.in_features,)
            else:
                shapes[name] = (layer.in_channels,) + (_SYNTHETIC_EXTENT,) * (
                    layer.weight.dim() - 2)
        return shapes, f"synthetic (extent {_SYNTHETIC_EXTENT} per spatial dim)"
    sample = next(iter_batches(data, what="data"))[0][:1]
    shapes = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))  # a hook's return replaces output

        return record

    handles = [layer.register_forward_hook(recorder(n)) for n, layer, _ in candidates]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n, _, _ in candidates if n not in shapes]
    if missing:
        raise ModelError(f"layers {missing} are never called in forward; exclude them.")
    return shapes, "data sample"


def _rank(layer: nn.Module, dec: Decomposer, config: LowRankConfig) -> Any:
    weight = layer.weight.detach()
    selection = config.rank_selection
    if selection is Selection.RANK:
        return dec.fixed_rank(config.rank)
    if selection is Selection.BUDGET:
        return dec.budget_rank(weight, config.param_budget)
    return dec.energy_rank(weight, config.energy, config.cp_iterations, config.seed)


def _plan(name: str, layer: nn.Module, dec: Decomposer, shape: tuple[int, ...], rank: Any,
          config: LowRankConfig) -> tuple[LayerPlan, Factorized]:
    """Factorize at `rank`, measure params / MACs / energy, decide whether it pays."""
    module, approx = dec.build(layer, rank, iterations=config.cp_iterations, seed=config.seed)
    params = (_params(layer), _params(module))
    macs = (count_macs(layer, shape), count_macs(module, shape))
    saves = params[1] < params[0] and macs[1] < macs[0]
    reason = "fewer params and MACs" if saves else (
        f"no saving at this rank (params x{params[1] / params[0]:.2f}, "
        f"MACs x{macs[1] / max(macs[0], 1):.2f})")
    plan = LayerPlan(
        name=name, type=type(layer).__name__, method=dec.method,
        rank=list(rank) if isinstance(rank, tuple) else rank,
        max_rank=dec.max_rank(layer.weight), energy_kept=energy_kept(layer.weight, approx),
        params_before=params[0], params_after=params[1], macs_before=macs[0],
        macs_after=macs[1], replaced=saves, reason=reason)
    return plan, module


def _labeled_batches(data: Any, limit: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches, count = [], 0
    for inputs, targets in iter_batches(data, batch_size=256, what="data"):
        if targets is None:
            raise DataError("selection='sensitivity' needs labeled data: (inputs, targets).")
        batches.append((inputs, targets))
        count += len(inputs)
        if count >= limit:
            break
    if not batches:
        raise DataError("data is empty; give at least one labeled batch.")
    return batches


def _sensitivity_plans(model: nn.Module, candidates: list[tuple[str, nn.Module, Decomposer]],
                       shapes: dict[str, tuple[int, ...]], config: LowRankConfig,
                       data: Any) -> list[tuple[LayerPlan, Factorized]]:
    """Per layer, alone: the smallest energy-rank that loses <= max_accuracy_drop."""
    batches = _labeled_batches(data, config.sensitivity_samples)
    base = evaluate(model, batches)
    plans = []
    for name, layer, dec in candidates:
        chosen = None
        ranks = dict.fromkeys(dec.energy_rank(layer.weight.detach(), e, config.cp_iterations,
                                              config.seed) for e in config.sensitivity_energies)
        for rank in ranks:  # ascending energy: cheapest first
            plan, module = _plan(name, layer, dec, shapes[name], rank, config)
            if not plan.replaced:
                continue
            set_submodule(model, name, module)
            plan.accuracy_drop = base - evaluate(model, batches)
            set_submodule(model, name, layer)
            if plan.accuracy_drop <= config.max_accuracy_drop:
                chosen = (plan, module)
                break
        if chosen is None:
            chosen = _plan(name, layer, dec, shapes[name], rank, config)
            chosen[0].replaced = False
            chosen[0].reason = (f"every saving rank lost more than max_accuracy_drop="
                                f"{config.max_accuracy_drop}")
        plans.append(chosen)
    return plans
