"""Sensitivity analysis: accuracy vs sparsity per layer, and a per-layer plan derived from it.

    curves = sensitivity_analysis(model, splits.val, structure="unstructured")
    plan = curves.plan(0.8)      # {'fc1.weight': 0.9, 'fc2.weight': 0.75, ...}

Each layer (unstructured: a weight tensor; channel: a dependency-graph group) is pruned alone by
magnitude at each level while the rest stays dense. The plan gives robust layers more sparsity:
it finds the smallest accuracy drop every layer may cost such that the size-weighted mean
sparsity reaches the target, then rescales to hit it exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigError, invalid
from edgeopt.pruning.common import example_batch, prunable_weights
from edgeopt.pruning.importance import layer_masks, position_scores
from edgeopt.pruning.surgery import channel_masks, zero_channels
from edgeopt.training import evaluate


@dataclasses.dataclass
class SensitivityCurves:
    structure: str
    baseline: float  # accuracy of the unpruned model on the analysis data
    levels: tuple[float, ...]
    curves: dict[str, list[float]]  # unit -> accuracy at each level
    sizes: dict[str, int]  # unit -> weights (unstructured) or channels (channel)
    max_sparsity: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plan(self, target: float) -> dict[str, float]:
        return plan_from_curves(self, target)


def plan_from_curves(curves: SensitivityCurves, target: float) -> dict[str, float]:
    """Per-unit sparsities whose size-weighted mean is `target` (capped at max_sparsity)."""
    if not 0.0 <= target < 1.0:
        raise invalid("plan.target", "a float in [0, 1)", target)
    names = list(curves.curves)
    sizes = np.array([curves.sizes[n] for n in names], dtype=float)
    levels = np.array(curves.levels)
    drops = np.array([[curves.baseline - a for a in curves.curves[n]] for n in names])

    def allowed(tolerance: float) -> np.ndarray:
        ok = drops <= tolerance + 1e-12
        return np.array([levels[row].max() if row.any() else 0.0 for row in ok])

    chosen = allowed(float(drops.max(initial=0.0)))
    for tolerance in sorted(set(drops.reshape(-1).tolist()) | {0.0}):
        candidate = allowed(tolerance)
        if (candidate * sizes).sum() >= target * sizes.sum():
            chosen = candidate
            break
    return dict(zip(names, _rescale(chosen, sizes, target, curves.max_sparsity).tolist()))


def _rescale(values: np.ndarray, sizes: np.ndarray, target: float, cap: float) -> np.ndarray:
    """Scale `values` so their size-weighted mean is `target`, redistributing what caps cut."""
    out = values.astype(float).copy()
    if target == 0 or not sizes.sum():
        return np.zeros_like(out)
    if not (out * sizes).sum():
        out[:] = 1.0
    for _ in range(20):
        free = out < cap
        fixed = (np.where(free, 0.0, out) * sizes).sum()
        wanted = target * sizes.sum() - fixed
        current = (np.where(free, out, 0.0) * sizes).sum()
        if current <= 0 or abs(current - wanted) < 1e-9:
            break
        out = np.where(free, np.minimum(out * wanted / current, cap), out)
    return out


def sensitivity_analysis(
    model: nn.Module, data: Any, *, structure: str = "unstructured",
    levels: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9), batches: int = 4,
    exclude: tuple[str, ...] = (), max_sparsity: float = 0.95,
) -> SensitivityCurves:
    """Accuracy on `data` (first `batches` batches) with each unit alone pruned at each level.
    The model is left unchanged."""
    if structure not in ("unstructured", "channel"):
        raise ConfigError(f"sensitivity_analysis.structure must be 'unstructured' or 'channel'; "
                          f"got {structure!r}.")
    model.eval()
    baseline = evaluate(model, data, limit=batches)
    if structure == "unstructured":
        curves, sizes = _weight_curves(model, data, levels, batches, exclude)
    else:
        curves, sizes = _channel_curves(model, data, levels, batches, exclude)
    return SensitivityCurves(structure, baseline, tuple(levels), curves, sizes, max_sparsity)


@torch.no_grad()
def _weight_curves(model: nn.Module, data: Any, levels: tuple[float, ...], batches: int,
                   exclude: tuple[str, ...]) -> tuple[dict[str, list[float]], dict[str, int]]:
    curves, sizes = {}, {}
    for name, weight in prunable_weights(model, exclude).items():
        original = weight.detach().clone()
        points = []
        for level in levels:
            mask = layer_masks({name: original.abs()}, {name: level})[name]
            weight.copy_(original * mask)
            points.append(evaluate(model, data, limit=batches))
        weight.copy_(original)
        curves[name], sizes[name] = points, weight.numel()
    return curves, sizes


@torch.no_grad()
def _channel_curves(model: nn.Module, data: Any, levels: tuple[float, ...], batches: int,
                    exclude: tuple[str, ...]) -> tuple[dict[str, list[float]], dict[str, int]]:
    from edgeopt.pruning.config import PruneConfig
    from edgeopt.pruning.graph import build_graph
    from edgeopt.pruning.structured import candidate_groups

    graph = build_graph(model, example_batch(data))
    config = PruneConfig(structure="channel", exclude=exclude)
    params = dict(model.named_parameters(remove_duplicate=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = np.zeros(graph.num_channels)
    for (name, dim), ids in graph.uses.items():
        if name in params:
            np.add.at(scores, ids, position_scores(params[name].abs(), dim, 2).numpy())
    curves, sizes = {}, {}
    for group, cands in candidate_groups(graph, config):
        points = []
        order = sorted(cands, key=lambda c: scores[c])
        for level in levels:
            count = min(len(cands), math.floor(len(group.channels) * level),
                        len(group.channels) - 1)
            zero_channels(model, channel_masks(graph, set(order[:count])))
            points.append(evaluate(model, data, limit=batches))
            model.load_state_dict(state)
        curves[group.name], sizes[group.name] = points, len(group.channels)
    return curves, sizes
