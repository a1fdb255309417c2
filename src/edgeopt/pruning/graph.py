"""Dependency graph for structured pruning, built from the model's traced (torch.export) graph.

Every output channel of a layer (conv / linear / embedding) is an *atom*. Walking the traced
graph, each tensor dimension carries the atoms of its indices; ops relate them (see
`rules.RULES`): a residual add or a depthwise conv ties atoms together, a concatenation lines
them up, a flatten repeats them, a consumer layer records which of its input slices they feed.
Tied atoms form a *channel*; removing a channel removes every recorded parameter slice of it,
which is exactly what keeps the pruned model consistent. Channels that reach the model output,
or pass through an op the table does not know, are *pinned* (never removed): an unknown op
costs pruning opportunities, never correctness. Channels touching the same parameter
dimensions form a *group* (e.g. the residual stream of a ResNet stage, or one layer's filters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from edgeopt.errors import ModelError

Key = tuple[str, int]  # (parameter or buffer name, dimension)


@dataclasses.dataclass(frozen=True)
class Origin:
    """An untracked dimension that is dimension `dim` of parameter `param` (e.g. a bias that is
    broadcast-added): tying it to channels records a slice of that parameter."""

    param: str
    dim: int


Info = Any  # np.ndarray of atom ids (tracked) | Origin | None (untracked)


class Builder:
    """Union-find over atoms plus the per-node dimension info; used by the op rules."""

    def __init__(self, params: dict[str, torch.Tensor], param_nodes: dict[fx.Node, str]) -> None:
        self.params = params
        self.param_nodes = param_nodes
        self.parent: list[int] = []
        self.pinned: list[int] = []
        self.reasons: dict[int, str] = {}  # first reason each pinned atom was pinned for
        self.current: fx.Node | None = None
        self.heads: list[int] = []
        self.uses: dict[Key, np.ndarray] = {}
        self.metas: dict[fx.Node, Any] = {}

    # -- atoms ------------------------------------------------------------------------------
    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, atom: int) -> int:
        parent = self.parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, *infos: Info) -> None:
        for info in infos:
            if isinstance(info, np.ndarray):
                atoms = info.reshape(-1).tolist()
                self.pinned.extend(atoms)
                reason = _describe(self.current)
                for atom in atoms:
                    self.reasons.setdefault(atom, reason)

    def pin_meta(self, meta: Any) -> None:
        if isinstance(meta, list | tuple):
            for item in meta:
                self.pin_meta(item)
        else:
            self.pin(meta)

    def record(self, param: str | None, dim: int, atoms: np.ndarray) -> None:
        """`atoms` index dimension `dim` of `param`: their removal slices it."""
        if param is None:
            return
        size = self.params[param].shape[dim]
        if size != atoms.size:  # broadcast parameter: cannot follow channels
            self.pin(atoms)
            return
        key = (param, dim)
        if key in self.uses:
            self.union(self.uses[key], atoms)
        else:
            self.uses[key] = atoms.copy()

    def couple(self, infos: Iterable[Info]) -> np.ndarray | None:
        """Tie dimensions that index the same values (same size); return the tracked atoms."""
        infos = list(infos)
        tracked = [i for i in infos if isinstance(i, np.ndarray)]
        if not tracked:
            return None
        first = tracked[0]
        for other in tracked[1:]:
            if other.size != first.size:
                self.pin(*tracked)
                return None
            self.union(first, other)
        for info in infos:
            if isinstance(info, Origin):
                self.record(info.param, info.dim, first)
            elif info is None:  # an untracked tensor of the same extent: it cannot shrink
                self.pin(first)
        return first

    # -- nodes ------------------------------------------------------------------------------
    def meta(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            if arg in self.metas:
                return self.metas[arg]
            return self.untracked(arg)
        return None

    def param(self, arg: Any) -> str | None:
        return self.param_nodes.get(arg) if isinstance(arg, fx.Node) else None

    @staticmethod
    def shape(arg: Any) -> tuple[int, ...] | None:
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def untracked(self, node: fx.Node) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return [None] * val.dim()
        if isinstance(val, list | tuple):
            return [[None] * v.dim() if isinstance(v, torch.Tensor) else None for v in val]
        return None

    def pin_args(self, node: fx.Node) -> None:
        for arg in _flat_nodes((node.args, node.kwargs)):
            self.pin_meta(self.meta(arg))


def _describe(node: fx.Node | None) -> str:
    """Where a channel got pinned: the op and, when known, the module it runs in."""
    if node is None:
        return "unknown"
    if node.op == "output":
        return "it reaches the model output"
    stack = node.meta.get("nn_module_stack") or {}
    where = f" in {list(stack.values())[-1][0]!r}" if stack and list(stack.values())[-1][0] else ""
    op = str(node.target) if isinstance(node.target, torch._ops.OpOverload) else getattr(
        node.target, "__name__", str(node.target))
    return f"{op}{where} (node {node.name}) cannot follow removed channels"


def _flat_nodes(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(value, out.append)
    return out


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels that touch the same parameter dimensions; `name` is the producing layer."""

    name: str
    members: tuple[Key, ...]
    channels: tuple[int, ...]  # channel ids, in index order of the first member
    pinned: frozenset[int]
    kind: str  # "channel" or "head"
    reasons: tuple[str, ...] = ()  # why its pinned channels cannot be removed

    @property
    def prunable(self) -> tuple[int, ...]:
        return tuple(c for c in self.channels if c not in self.pinned)


@dataclasses.dataclass
class DependencyGraph:
    """Channels, their parameter slices and groups; analysis only (the model is untouched)."""

    uses: dict[Key, np.ndarray]  # channel id per index of each coupled parameter dimension
    groups: list[Group]
    nodes: dict[str, tuple[int, np.ndarray]]  # traced node -> (dim, channel id per index)
    program: Any  # the ExportedProgram it was built from (None: shared from a copy, see program_of)
    example: torch.Tensor

    @property
    def num_channels(self) -> int:
        return sum(len(g.channels) for g in self.groups)

    def keep_masks(self, removed: set[int]) -> dict[Key, np.ndarray]:
        """Bool mask per coupled parameter dimension: True for indices that stay."""
        lookup = np.zeros(max(self.num_channels, 1), dtype=bool)
        lookup[list(removed)] = True
        return {key: ~lookup[ids] for key, ids in self.uses.items()}

    def group_of(self) -> dict[int, Group]:
        return {c: g for g in self.groups for c in g.channels}

    def summary(self) -> list[dict[str, Any]]:
        return [{"name": g.name, "kind": g.kind, "channels": len(g.channels),
                 "prunable": len(g.prunable), "members": [f"{p}[{d}]" for p, d in g.members],
                 "pinned_because": list(g.reasons)} for g in self.groups]


def export_program(model: nn.Module, example: torch.Tensor) -> Any:
    """torch.export the model (eval mode, static shapes) or explain why it cannot be traced."""
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # export fails in many ways; all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"cannot trace {type(model).__name__} for structured pruning ({type(exc).__name__}: "
            f"{first[:300]}); use structure='unstructured' or make the forward traceable."
        ) from exc
    finally:
        model.train(was_training)


_SHARED: dict[Any, DependencyGraph] | None = None  # structure -> graph, inside reuse_graphs()


@contextlib.contextmanager
def reuse_graphs() -> Iterator[None]:
    """Within this block, models of one structure share one dependency graph instead of each
    paying a torch.export (about 1.8 s for a ResNet-8). Only for callers whose models are all
    copies of one model, pruned or not (a search's trials): the structure key (module tree,
    parameter and buffer shapes, example shape) cannot tell two different forwards apart."""
    global _SHARED
    outer, _SHARED = _SHARED, {} if _SHARED is None else _SHARED
    try:
        yield
    finally:
        _SHARED = outer


def structure_key(model: nn.Module, example: torch.Tensor) -> tuple[Any, ...]:
    return (type(model), tuple((n, type(m)) for n, m in model.named_modules()),
            tuple((n, tuple(t.shape), t.dtype) for n, t in model.state_dict(keep_vars=True).items()),
            tuple(example.shape), example.dtype)


def program_of(model: nn.Module, graph: DependencyGraph) -> Any:
    """The traced program of `model` (a shared graph carries none: its program runs the weights
    of the copy it was built from)."""
    return graph.program if graph.program is not None else export_program(model, graph.example)


def build_graph(model: nn.Module, example: torch.Tensor) -> DependencyGraph:
    """Trace `model` on `example` and group its coupled channels (see reuse_graphs)."""
    if _SHARED is None:
        return _build_graph(model, example)
    key = structure_key(model, example)
    if key not in _SHARED:
        _SHARED[key] = dataclasses.replace(_build_graph(model, example), program=None)
    return _SHARED[key]


def _build_graph(model: nn.Module, example: torch.Tensor) -> DependencyGraph:
    from edgeopt.pruning.rules import apply_rule

    program = export_program(model, example)
    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    state = {**dict(model.named_parameters(remove_duplicate=False)),
             **dict(model.named_buffers(remove_duplicate=False))}
    param_nodes = {n: names[n.name] for n in program.graph.nodes
                   if n.op == "placeholder" and n.name in names}
    builder = Builder({k: v for k, v in state.items()}, param_nodes)
    for node in program.graph.nodes:
        builder.current = node
        if node.op == "placeholder":
            fqn = param_nodes.get(node)
            rank = len(builder.shape(node) or ())
            builder.metas[node] = [Origin(fqn, d) for d in range(rank)] if fqn else \
                builder.untracked(node)
        elif node.op == "call_function":
            builder.metas[node] = _checked(builder, node, apply_rule(builder, node))
        elif node.op == "output":
            builder.pin_args(node)
    return _finalize(builder, program, example)


def _checked(builder: Builder, node: fx.Node, meta: Any) -> Any:
    """A rule's result must match the node's rank; anything else pins (a bug-proof fallback)."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        if isinstance(meta, list) and len(meta) == val.dim() and all(
            not isinstance(i, np.ndarray) or i.size == val.shape[d] for d, i in enumerate(meta)
        ):
            return meta
        builder.pin_args(node)
        builder.pin_meta(meta)
        return builder.untracked(node)
    if node.target is operator.getitem or isinstance(val, list | tuple):
        return meta
    return None


def _finalize(builder: Builder, program: Any, example: torch.Tensor) -> DependencyGraph:
    roots = np.array([builder.find(a) for a in range(len(builder.parent))], dtype=np.int64)
    used = sorted({int(r) for ids in builder.uses.values() for r in roots[ids].tolist()})
    renumber = np.full(max(len(roots), 1), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    uses = {key: renumber[roots[ids]] for key, ids in builder.uses.items()}
    pinned = {int(renumber[roots[a]]) for a in builder.pinned} - {-1}
    reasons: dict[int, list[str]] = {}
    for atom, reason in builder.reasons.items():
        channel = int(renumber[roots[atom]])
        if channel >= 0 and reason not in reasons.setdefault(channel, []):
            reasons[channel].append(reason)
    heads = {int(renumber[roots[a]]) for a in builder.heads} - {-1}
    footprint: dict[int, list[Key]] = {}
    for key, ids in uses.items():
        for c in dict.fromkeys(ids.tolist()):
            footprint.setdefault(c, []).append(key)
    by_members: dict[tuple[Key, ...], list[int]] = {}
    for c in range(len(used)):
        by_members.setdefault(tuple(footprint[c]), []).append(c)
    groups, names = [], set()
    for members, channels in by_members.items():
        name = base = members[0][0].rsplit(".", 1)[0]
        while name in names:
            name = f"{base}#{len(names)}"
        names.add(name)
        kind = "head" if all(c in heads for c in channels) else "channel"
        why = tuple(dict.fromkeys(r for c in channels for r in reasons.get(c, [])))
        groups.append(Group(name, members, tuple(channels),
                            frozenset(c for c in channels if c in pinned), kind, why[:3]))
    nodes = {}
    for node, meta in builder.metas.items():
        if isinstance(meta, list):
            for dim, info in enumerate(meta):
                if isinstance(info, np.ndarray):
                    ids = renumber[roots[info]]
                    if (ids >= 0).all():
                        nodes[node.name] = (dim, ids)
                    break
    return DependencyGraph(uses, groups, nodes, program, example)
