"""One small protocol per structure, so every schedule drives every structure the same way.

    step(model, sparsity)   prune to `sparsity` for real (of the original size)
    soft(model, sparsity)   prune to `sparsity` with masks (gradual schedules, mid-training)
    finish(model)           turn masks into real removal (after `soft`)
    after_step()            hook for fit after each optimizer step (keeps zeros at zero)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from edgeopt.errors import ModelError
from edgeopt.pruning.common import prunable_weights
from edgeopt.pruning.config import Criterion, PruneConfig, Scope, Structure
from edgeopt.pruning.graph import DependencyGraph, build_graph
from edgeopt.pruning.layers import block_scores, bypass, find_blocks
from edgeopt.pruning.signals import MovementTracker
from edgeopt.pruning.stats import PruneStats
from edgeopt.pruning.structured import (
    candidate_groups,
    channel_scores,
    select_channels,
    shrink_checked,
)
from edgeopt.pruning.surgery import channel_masks, zero_channels
from edgeopt.pruning.unstructured import Masks, bake, nm_layers, prune_weights

Hook = Callable[[nn.Module], None]


class Pruner(Protocol):
    extra_hook: Hook | None
    plan: dict[str, float] | None  # per-layer sparsities (criterion='sensitivity')

    def step(self, model: nn.Module, sparsity: float) -> None: ...
    def soft(self, model: nn.Module, sparsity: float) -> None: ...
    def finish(self, model: nn.Module) -> None: ...
    def after_step(self) -> Hook | None: ...
    def record(self, stats: PruneStats) -> None: ...


def _scaled(plan: dict[str, float] | None, sparsity: float, target: float) -> dict[str, float] | None:
    """A per-layer plan for an intermediate sparsity of a schedule (same proportions)."""
    if plan is None or target <= 0:
        return plan
    return {name: value * sparsity / target for name, value in plan.items()}


def _chain(*hooks: Hook | None) -> Hook | None:
    active = [h for h in hooks if h is not None]
    if not active:
        return None

    def run(model: nn.Module) -> None:
        for hook in active:
            hook(model)

    return run


class WeightPruner:
    """Unstructured / N:M: masks baked into the weights, re-applied after every step."""

    def __init__(self, model: nn.Module, config: PruneConfig, data: Any) -> None:
        self.config, self.data = config, data
        self.plan: dict[str, float] | None = None
        self.weights = prunable_weights(model, config.exclude)
        self.skipped: list[dict[str, Any]] = []
        if config.structure is Structure.NM:
            self.weights, self.skipped = nm_layers(self.weights, config.m)
        if not self.weights:
            raise ModelError(f"{type(model).__name__} has no prunable Linear / Conv weights "
                             f"(exclude={list(config.exclude)}).")
        self.masks: Masks | None = None
        self.tracker = MovementTracker(self.weights) if config.criterion is Criterion.MOVEMENT \
            else None
        self.extra_hook: Hook | None = None

    def step(self, model: nn.Module, sparsity: float) -> None:
        signals = None
        if self.tracker is not None and any(s.abs().sum() > 0 for s in self.tracker.scores.values()):
            signals = self.tracker.signals()
        self.masks = prune_weights(model, self.weights, self.config, sparsity, self.data,
                                   previous=self.masks, signals=signals,
                                   plan=_scaled(self.plan, sparsity, self.config.sparsity))

    soft = step

    def finish(self, model: nn.Module) -> None:
        pass

    def after_step(self) -> Hook | None:
        def keep_zeros(_: nn.Module) -> None:
            if self.masks is not None:
                bake(self.weights, self.masks)

        return _chain(self.tracker, self.extra_hook, keep_zeros)

    def record(self, stats: PruneStats) -> None:
        stats.skipped_layers = self.skipped


def _identity(model: nn.Module) -> tuple[Any, ...]:
    """The module and tensor objects a traced program runs: equal while nothing was replaced."""
    return (tuple(map(id, model.modules())),
            tuple((id(t), tuple(t.shape)) for t in model.state_dict(keep_vars=True).values()))


class ChannelPruner:
    """Channels / neurons / heads: removed for real in `step`; zero-masked in `soft`."""

    def __init__(self, model: nn.Module, config: PruneConfig, data: Any, example: torch.Tensor
                 ) -> None:
        self.config, self.data, self.example = config, data, example
        self.plan: dict[str, float] | None = None
        self.graph: DependencyGraph | None = None
        self.removed: set[int] = set()
        self.masks: dict[Any, Any] = {}
        graph = build_graph(model, example)
        _check_prunable(model, graph, config)
        # the first step reuses this graph while the model is the same (a one-shot prune would
        # otherwise trace it twice); training in between changes weights, not the structure
        self._first: tuple[Any, DependencyGraph] | None = (_identity(model), graph)
        self.channels_before = graph.num_channels
        self.original = {g.name: len(g.channels) for g in graph.groups}
        self.pinned = [{"name": g.name, "channels": len(g.pinned), "reasons": list(g.reasons)}
                       for g in graph.groups if g.pinned]
        self.channels_removed = 0
        self.extra_hook: Hook | None = None

    def step(self, model: nn.Module, sparsity: float) -> None:
        first, self._first = self._first, None
        graph = first[1] if first and first[0] == _identity(model) else build_graph(
            model, self.example)
        scores = channel_scores(model, graph, self.config, self.data)
        if self.config.scope is Scope.GLOBAL and self.plan is None:
            done = self.channels_removed / max(1, self.channels_before)
            relative = 1.0 - (1.0 - sparsity) / (1.0 - done)  # of what is left
            removed = select_channels(graph, scores, self.config, relative)
        else:
            removed = select_channels(graph, scores, self.config, sparsity,
                                      self._per_group(graph, sparsity))
        shrink_checked(model, graph, removed, self.example)
        self.channels_removed += len(removed)

    def _per_group(self, graph: DependencyGraph, sparsity: float) -> dict[str, float]:
        """Fraction of each group's current channels to remove so that `sparsity` (or the
        plan's share of it) of its original channels is gone."""
        plan = _scaled(self.plan, sparsity, self.config.sparsity)
        out = {}
        for group in graph.groups:
            target = plan.get(group.name, 0.0) if plan is not None else sparsity
            original = self.original.get(group.name, len(group.channels))
            out[group.name] = max(0.0, 1.0 - (1.0 - target) * original / len(group.channels))
        return out

    def soft(self, model: nn.Module, sparsity: float) -> None:
        if self.graph is None:
            self.graph = build_graph(model, self.example)
        scores = channel_scores(model, self.graph, self.config, self.data)
        self.removed = select_channels(self.graph, scores, self.config, sparsity,
                                       _scaled(self.plan, sparsity, self.config.sparsity),
                                       already=self.removed)
        self.masks = channel_masks(self.graph, self.removed)
        zero_channels(model, self.masks)

    def finish(self, model: nn.Module) -> None:
        if self.graph is not None and self.removed:
            shrink_checked(model, self.graph, self.removed, self.example)
            self.channels_removed += len(self.removed)
        self.graph, self.masks = None, {}

    def after_step(self) -> Hook | None:
        def keep_zeros(model: nn.Module) -> None:
            if self.masks:
                zero_channels(model, self.masks)

        return _chain(self.extra_hook, keep_zeros)

    def record(self, stats: PruneStats) -> None:
        stats.channels_before = self.channels_before
        stats.channels_removed = self.channels_removed
        stats.pinned = self.pinned


def _check_prunable(model: nn.Module, graph: DependencyGraph, config: PruneConfig) -> None:
    """Refuse, naming layers and reasons, a structure the model has nothing to remove for."""
    if candidate_groups(graph, config):
        return
    name = type(model).__name__
    if config.structure is Structure.HEAD:
        raise ModelError(
            f"structure='head' found no attention heads in {name}: heads are query / key / value "
            "projections reshaped to (heads, head_dim) with -1 heads and fed to attention.")
    why = "; ".join(f"{g.name!r}: {g.reasons[0] if g.reasons else 'excluded'}"
                    for g in graph.groups[:6])
    raise ModelError(f"no channel of {name} can be removed ({why}). Check PruneConfig.exclude "
                     "or use structure='unstructured'.")


class LayerPruner:
    """Residual blocks replaced by their skip path (`soft` is the same as `step`)."""

    def __init__(self, model: nn.Module, config: PruneConfig, data: Any,
                 example: torch.Tensor) -> None:
        self.config, self.data, self.example = config, data, example
        self.total = len(find_blocks(model, example, config.exclude))
        if not self.total:
            raise ModelError(
                f"structure='layer' needs residual blocks (a module computing x + f(x)); "
                f"{type(model).__name__} has none. Use structure='channel' instead.")
        self.removed: list[str] = []
        self.extra_hook: Hook | None = None
        self.plan: dict[str, float] | None = None  # unused: blocks are ranked directly

    def step(self, model: nn.Module, sparsity: float) -> None:
        count = math.floor(self.total * sparsity + 1e-9) - len(self.removed)
        if count <= 0:
            return
        blocks = find_blocks(model, self.example, self.config.exclude)
        scores = block_scores(model, blocks, self.config, self.data)
        chosen = [blocks[i] for i in scores.argsort()[:count]]
        bypass(model, chosen, self.example)
        self.removed += [b.name for b in chosen]

    soft = step

    def finish(self, model: nn.Module) -> None:
        pass

    def after_step(self) -> Hook | None:
        return self.extra_hook

    def record(self, stats: PruneStats) -> None:
        stats.blocks_removed = list(self.removed)


def make_pruner(model: nn.Module, config: PruneConfig, data: Any, example: torch.Tensor | None
                ) -> Pruner:
    pruner: Pruner
    if config.structure in (Structure.UNSTRUCTURED, Structure.NM):
        pruner = WeightPruner(model, config, data)
    elif config.structure is Structure.LAYER:
        assert example is not None  # check_inputs refuses structured pruning without data
        return LayerPruner(model, config, data, example)
    else:
        assert example is not None
        pruner = ChannelPruner(model, config, data, example)
    if config.layer_sparsity:  # the plan replaces `sparsity` layer by layer
        pruner.plan = dict(config.layer_sparsity)
    return pruner
