"""Structured pruning: score channels of the dependency graph, choose, and remove them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from edgeopt.data import iter_batches
from edgeopt.errors import ModelError
from edgeopt.pruning.common import excluded, output_shapes
from edgeopt.pruning.config import ActivationStat, Criterion, PruneConfig, Structure
from edgeopt.pruning.graph import DependencyGraph, Group, program_of
from edgeopt.pruning.importance import CRITERIA, NEEDS, NORM_POWER, Signals, position_scores
from edgeopt.pruning.signals import gather
from edgeopt.pruning.surgery import shrink

aten = torch.ops.aten
_ACTIVATIONS = {aten.relu, aten.relu_, aten.gelu, aten.silu, aten.hardtanh, aten.hardtanh_,
                aten.hardswish, aten.sigmoid, aten.tanh, aten.leaky_relu, aten.elu, aten.mish}


def graph_params(model: nn.Module, graph: DependencyGraph) -> dict[str, nn.Parameter]:
    """The parameters (not buffers) the graph slices, by name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name: params[name] for name, _ in graph.uses if name in params}


def channel_scores(
    model: nn.Module, graph: DependencyGraph, config: PruneConfig, data: Any,
    signals: dict[str, Signals] | None = None,
) -> np.ndarray:
    """One importance score per channel of `graph` (higher = keep)."""
    criterion = config.criterion.value
    rng = np.random.default_rng(config.advanced.seed)
    if config.criterion is Criterion.RANDOM:
        return rng.random(graph.num_channels)
    if config.criterion is Criterion.ACTIVATION:
        return activation_scores(graph, data, config, model)
    params = graph_params(model, graph)
    if signals is None and NEEDS.get(criterion) == "gradients":
        adv = config.advanced
        signals = gather(criterion, model, params, data, batches=adv.importance_batches,
                         batch_size=adv.batch_size)
    power = NORM_POWER.get(criterion, 1)
    total = np.zeros(graph.num_channels)
    generator = torch.Generator().manual_seed(config.advanced.seed)
    for (name, dim), ids in graph.uses.items():
        if name not in params:
            continue
        scores = CRITERIA[criterion](params[name], (signals or {}).get(name), generator)
        np.add.at(total, ids, position_scores(scores, dim, power).numpy())
    return np.sqrt(np.maximum(total, 0)) if power == 2 else total


@torch.no_grad()
def activation_scores(graph: DependencyGraph, data: Any, config: PruneConfig,
                      model: nn.Module | None = None) -> np.ndarray:
    """Per channel: mean |activation| (or 1 - fraction of zeros) after its activation functions,
    else at every traced tensor carrying it, over `importance_batches` of `data`. `model` is
    needed when the graph is a shared one (reuse_graphs), which carries no program."""
    program = graph.program if model is None else program_of(model, graph)
    module = program.module()
    chunk = graph.example.shape[0]
    apoz = config.advanced.activation_stat is ActivationStat.APOZ
    sums = np.zeros((2, graph.num_channels))
    counts = np.zeros((2, graph.num_channels))
    activation_nodes = {n.name for n in program.graph.nodes
                        if getattr(n.target, "overloadpacket", None) in _ACTIVATIONS}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            out = super().run_node(node)
            if node.name in graph.nodes and isinstance(out, torch.Tensor):
                dim, ids = graph.nodes[node.name]
                x = out.detach().movedim(dim, 0).reshape(out.shape[dim], -1).to(torch.float64)
                stat = (x != 0).double().mean(1) if apoz else x.abs().mean(1)
                for row in {0, int(node.name in activation_nodes)}:
                    np.add.at(sums[row], ids, stat.numpy())
                    np.add.at(counts[row], ids, 1)
            return out

    recorder = Recorder(module)
    for index, (inputs, _) in enumerate(iter_batches(data, batch_size=config.advanced.batch_size)):
        if index >= config.advanced.importance_batches:
            break
        for start in range(0, inputs.shape[0] - chunk + 1, chunk):
            recorder.run(inputs[start:start + chunk])
    means = sums / np.maximum(counts, 1)
    return np.where(counts[1] > 0, means[1], means[0])


def candidate_groups(graph: DependencyGraph, config: PruneConfig) -> list[tuple[Group, list[int]]]:
    """(group, its removable channels) for the groups the structure allows."""
    out = []
    for group in graph.groups:
        if config.structure is Structure.HEAD and group.kind != "head":
            continue
        if any(excluded(name.rpartition(".")[0], config.exclude) for name, _ in group.members):
            continue
        if group.prunable:
            out.append((group, list(group.prunable)))
    return out


def _round_to(group: Group, round_to: int) -> int:
    return 1 if group.kind == "head" else round_to


def _removable(group: Group, candidates: int, sparsity: float, round_to: int) -> int:
    """How many channels of `group` to remove: at least one survives; kept widths are multiples
    of `round_to` where the group allows it."""
    total = len(group.channels)
    remove = min(candidates, math.floor(total * sparsity + 1e-9), total - 1)
    kept = total - remove
    if round_to > 1 and kept % round_to:
        kept = min(total, kept + round_to - kept % round_to)
    return max(0, total - kept)


def select_channels(
    graph: DependencyGraph, scores: np.ndarray, config: PruneConfig, sparsity: float,
    plan: dict[str, float] | None = None, already: set[int] | None = None,
) -> set[int]:
    """Channels to remove: the lowest-scored per group (scope 'layer', or the sensitivity plan)
    or overall after normalizing each group's scores by their mean (scope 'global')."""
    already = already or set()
    groups = candidate_groups(graph, config)
    adv = config.advanced
    removed: set[int] = set()
    if config.scope.value == "layer" or plan is not None:
        for group, cands in groups:
            target = plan.get(group.name, 0.0) if plan is not None else sparsity
            count = _removable(group, len(cands), target, _round_to(group, adv.round_to))
            order = sorted(cands, key=lambda c: (c not in already, scores[c]))
            removed.update(order[:count])
        return removed
    entries = []
    for group, cands in groups:
        scale = np.abs(scores[list(group.channels)]).mean() + 1e-12
        entries += [(c not in already, scores[c] / scale, c, group) for c in cands]
    budget = math.floor(sum(len(c) for _, c in groups) * sparsity + 1e-9)
    caps = {g.name: _removable(g, len(c), adv.max_layer_sparsity, 1) for g, c in groups}
    taken: dict[str, int] = {}
    for _, _, channel, group in sorted(entries, key=lambda e: (e[0], e[1])):
        if len(removed) >= budget:
            break
        if taken.get(group.name, 0) < caps[group.name]:
            removed.add(channel)
            taken[group.name] = taken.get(group.name, 0) + 1
    return _rounded(removed, [g for g, _ in groups], scores, already, adv.round_to)


def _rounded(removed: set[int], groups: list[Group], scores: np.ndarray, already: set[int],
             round_to: int) -> set[int]:
    """Give back the best-scored removed channels of each group until its kept count is a
    multiple of `round_to` (channels removed earlier are given back last)."""
    out = set(removed)
    for group in groups:
        step = _round_to(group, round_to)
        chosen = sorted((c for c in group.channels if c in out),
                        key=lambda c: (c in already, -scores[c]))
        kept = len(group.channels) - len(chosen)
        if step > 1 and kept % step:
            extra = min(len(chosen), step - kept % step)
            out.difference_update(chosen[:extra])
    return out


def shrink_checked(model: nn.Module, graph: DependencyGraph, removed: set[int],
                   example: torch.Tensor) -> None:
    """Shrink, then make sure the model still runs and gives outputs of the same shapes."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        before = output_shapes(model(example))
        shrink(model, graph, removed)
        try:
            after = output_shapes(model(example))
        except Exception as exc:
            raise ModelError(
                f"{type(model).__name__} no longer runs after removing channels "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); its forward may "
                "hard-code a channel count. Exclude that part with PruneConfig.exclude."
            ) from exc
    model.train(was_training)
    if before != after:
        raise ModelError(f"structured pruning changed the output shapes of "
                         f"{type(model).__name__} from {before} to {after}.")
