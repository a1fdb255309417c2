"""Unstructured and N:M pruning: score weights, build masks, bake the zeros into the tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.pruning.config import PruneConfig, Scope, Structure
from edgeopt.pruning.importance import (
    CRITERIA,
    Signals,
    global_masks,
    layer_masks,
    nm_mask,
)
from edgeopt.pruning.signals import gather

Masks = dict[str, torch.Tensor]


def nm_layers(weights: dict[str, nn.Parameter], m: int) -> tuple[dict[str, nn.Parameter],
                                                                   list[dict[str, Any]]]:
    """Weights N:M applies to, and the skipped ones: layers with fewer than `m` inputs per
    output (depthwise convs, a 1-channel stem) cannot hold a group of m and stay dense.
    A layer with >= m inputs that m does not divide is an error, named here before any work."""
    kept, skipped, bad = {}, [], []
    for name, w in weights.items():
        inputs = w.shape[1]
        if inputs < m:
            skipped.append({"name": name, "reason": f"{inputs} input(s) per output < m={m}"})
        elif inputs % m:
            bad.append(f"{name.rpartition('.')[0]!r} ({inputs} inputs)")
        else:
            kept[name] = w
    if bad:
        raise ConfigError(
            f"PruneConfig.m={m} must divide the input size of every N:M layer; it does not for "
            f"{', '.join(bad)}. Choose another m or list those layers in PruneConfig.exclude.")
    return kept, skipped


def gather_signals(
    model: nn.Module, weights: dict[str, nn.Parameter], config: PruneConfig, data: Any,
) -> dict[str, Signals]:
    """What the criterion reads from data (nothing for magnitude / random / sensitivity)."""
    adv = config.advanced
    return gather(config.criterion.value, model, weights, data, batches=adv.importance_batches,
                  batch_size=adv.batch_size)


@torch.no_grad()
def weight_scores(
    weights: dict[str, nn.Parameter], config: PruneConfig, signals: dict[str, Signals],
    previous: Masks | None = None,
) -> dict[str, torch.Tensor]:
    """Scores per weight; already-pruned weights score -inf so they stay pruned."""
    generator = torch.Generator().manual_seed(config.advanced.seed)
    fn = CRITERIA[config.criterion.value]
    out = {}
    for name, w in weights.items():
        score = fn(w, signals.get(name), generator).to(torch.float64)
        if previous is not None and name in previous:
            score = score.masked_fill(~previous[name], float("-inf"))
        out[name] = score
    return out


def make_masks(scores: dict[str, torch.Tensor], config: PruneConfig, sparsity: float,
               plan: dict[str, float] | None = None) -> Masks:
    """Masks (True = keep) at `sparsity` for the configured structure and scope."""
    if config.structure is Structure.NM:
        return {name: nm_mask(s, config.n, config.m) for name, s in scores.items()}
    if plan is not None:
        return layer_masks(scores, {name: plan.get(name, 0.0) for name in scores})
    if config.scope is Scope.GLOBAL:
        return global_masks(scores, sparsity, config.advanced.max_layer_sparsity)
    return layer_masks(scores, dict.fromkeys(scores, sparsity))


@torch.no_grad()
def bake(weights: dict[str, nn.Parameter], masks: Masks) -> None:
    """Zero the pruned weights in place (no mask parametrization is left behind)."""
    for name, mask in masks.items():
        weights[name].mul_(mask.to(weights[name].dtype))


def mask_hook(weights: dict[str, nn.Parameter], masks: Masks) -> Any:
    """An `after_step` hook for fit that keeps pruned weights at zero while training."""
    def hook(_: nn.Module) -> None:
        bake(weights, masks)

    return hook


def prune_weights(
    model: nn.Module, weights: dict[str, nn.Parameter], config: PruneConfig, sparsity: float,
    data: Any, *, previous: Masks | None = None, plan: dict[str, float] | None = None,
    signals: dict[str, Signals] | None = None,
) -> Masks:
    """One unstructured / N:M step in place; returns the masks (monotone w.r.t. `previous`)."""
    if signals is None:
        signals = gather_signals(model, weights, config, data)
    scores = weight_scores(weights, config, signals, previous)
    masks = make_masks(scores, config, sparsity, plan)
    bake(weights, masks)
    return masks
