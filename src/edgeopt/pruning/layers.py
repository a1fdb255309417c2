"""Layer pruning: replace whole residual blocks by their skip path.

A module is a *block* when, in the traced graph, it has one tensor input x, one output of x's
shape, and the output is x plus residual branches (a chain of adds back to x), optionally
followed by an activation. Removing the block then means computing act(x): the replacement
`Bypass` module has no parameters and no MACs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from edgeopt.data import iter_batches
from edgeopt.pruning.common import excluded, labeled_batches, loss_fn
from edgeopt.pruning.config import Criterion, PruneConfig
from edgeopt.pruning.graph import export_program
from edgeopt.pruning.importance import CRITERIA
from edgeopt.pruning.signals import gather
from edgeopt.surgery import set_submodule

aten = torch.ops.aten
_ADDS = {aten.add, aten.add_}


# Activation op after the residual sum -> the kind of activation a bypass applies (None when
# the op's arguments make it something else), and kind -> module.
ACTIVATIONS: dict[Any, Any] = {
    aten.relu: lambda n: "relu", aten.relu_: lambda n: "relu", aten.silu: lambda n: "silu",
    aten.gelu: lambda n: "gelu_tanh" if n.kwargs.get("approximate") == "tanh" else "gelu",
    aten.hardtanh: lambda n: "relu6" if list(n.args[1:3]) == [0.0, 6.0] else None,
    aten.hardtanh_: lambda n: "relu6" if list(n.args[1:3]) == [0.0, 6.0] else None,
}
ACTIVATION_MODULES: dict[str, Any] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


class Bypass(nn.Module):
    """What a removed block computes: its activation applied to its input (or the input)."""

    def __init__(self, activation: nn.Module | None = None, arity: int = 0) -> None:
        super().__init__()
        self.activation = activation if activation is not None else nn.Identity()
        self.arity = arity  # 0: returns a tensor; k: a tuple of k with the tensor first

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        y = self.activation(x)
        return y if self.arity == 0 else (y,) + (None,) * (self.arity - 1)


@dataclasses.dataclass(frozen=True)
class Block:
    name: str
    activation: str | None  # op applied after the residual sum
    params: int


def _packet(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", None)


def _skip_source(node: fx.Node, inputs: set[fx.Node], inside: set[fx.Node]) -> fx.Node | None:
    """The input x when `node` is x + branch (+ branch ...), following the skip through adds."""
    while node in inside and _packet(node) in _ADDS:
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        found = [a for a in operands if a in inputs]
        if len(operands) == 2 and len(found) == 1:
            return found[0]
        nxt = [a for a in operands if a in inside and _packet(a) in _ADDS]
        if len(operands) != 2 or len(nxt) != 1:
            return None
        node = nxt[0]
    return None


def _module_nodes(program: Any) -> dict[str, list[fx.Node]]:
    members: dict[str, list[fx.Node]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            if path:
                members.setdefault(path, []).append(node)
    return members


def _candidate(nodes: list[fx.Node], params: set[str]) -> tuple[bool, str | None]:
    """(is a block, activation kind): one output, equal to x + residual branches for an input
    x of the same shape (other inputs, e.g. attention masks, are ignored by the bypass),
    optionally followed by a supported activation."""
    inside = set(nodes)
    inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside
              and a.name not in params and isinstance(a.meta.get("val"), torch.Tensor)}
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    if not inputs or len(outputs) != 1:
        return False, None
    out = outputs[0]
    kind, last = None, out
    if _packet(out) in ACTIVATIONS:
        kind, last = ACTIVATIONS[_packet(out)](out), out.args[0]
        if kind is None:
            return False, None
    x = _skip_source(last, inputs, inside) if isinstance(last, fx.Node) else None
    if x is None or x.meta["val"].shape != out.meta["val"].shape:
        return False, None
    return True, kind


def find_blocks(model: nn.Module, example: torch.Tensor, exclude: tuple[str, ...] = ()
                ) -> list[Block]:
    """Innermost modules that can be replaced by their skip path, in graph order."""
    program = export_program(model, example)
    sig = program.graph_signature
    params = {*sig.inputs_to_parameters, *sig.inputs_to_buffers}
    found: dict[str, Block] = {}
    for path, nodes in _module_nodes(program).items():
        ok, kind = _candidate(nodes, params)
        if ok and not excluded(path, exclude):
            module = model.get_submodule(path)
            found[path] = Block(path, kind, sum(p.numel() for p in module.parameters()))
    inner = [b for b in found.values()
             if not any(o.startswith(b.name + ".") for o in found if o != b.name)]
    return inner


def _activation_module(kind: str | None) -> nn.Module | None:
    return ACTIVATION_MODULES[kind]() if kind else None


@torch.no_grad()
def _arity(model: nn.Module, block: Block, example: torch.Tensor) -> int:
    seen: list[Any] = []
    handle = model.get_submodule(block.name).register_forward_hook(
        lambda m, a, out: seen.append(out))
    try:
        model(example)
    finally:
        handle.remove()
    out = seen[0] if seen else None
    return len(out) if isinstance(out, tuple) else 0


def bypass(model: nn.Module, blocks: list[Block], example: torch.Tensor) -> None:
    """Replace each block by `Bypass` in place."""
    arities = {b.name: _arity(model, b, example) for b in blocks}
    for block in blocks:
        set_submodule(model, block.name, Bypass(_activation_module(block.activation),
                                                 arities[block.name]))


def block_scores(model: nn.Module, blocks: list[Block], config: PruneConfig, data: Any
                 ) -> np.ndarray:
    """One score per block (higher = keep)."""
    adv = config.advanced
    if config.criterion is Criterion.RANDOM:
        return np.random.default_rng(adv.seed).random(len(blocks))
    if config.criterion is Criterion.ACTIVATION:
        return _change_scores(model, blocks, data, adv.importance_batches, adv.batch_size)
    if config.criterion is Criterion.SENSITIVITY:
        return _loss_scores(model, blocks, data, adv.importance_batches, adv.batch_size)
    params = {f"{b.name}.{n}": p for b in blocks
              for n, p in model.get_submodule(b.name).named_parameters()}
    signals = gather(config.criterion.value, model, params, data,
                     batches=adv.importance_batches, batch_size=adv.batch_size)
    generator = torch.Generator().manual_seed(adv.seed)
    fn = CRITERIA[config.criterion.value]
    out = []
    for block in blocks:
        own = [n for n in params if n.startswith(block.name + ".")]
        scores = [fn(params[n], signals.get(n), generator).double().mean() for n in own]
        out.append(float(torch.stack(scores).mean()) if scores else 0.0)
    return np.array(out)


@torch.no_grad()
def _change_scores(model: nn.Module, blocks: list[Block], data: Any, batches: int,
                   batch_size: int) -> np.ndarray:
    """How much each block changes its input: mean ||block(x) - x|| / ||x||."""
    totals = np.zeros(len(blocks))
    handles = []
    for index, block in enumerate(blocks):
        def hook(m: nn.Module, args: tuple[Any, ...], out: Any, index: int = index) -> None:
            y = out[0] if isinstance(out, tuple) else out
            totals[index] += float((y - args[0]).norm() / (args[0].norm() + 1e-12))
        handles.append(model.get_submodule(block.name).register_forward_hook(hook))
    try:
        for step, (inputs, _) in enumerate(iter_batches(data, batch_size=batch_size)):
            if step >= batches:
                break
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return totals


@torch.no_grad()
def _loss_scores(model: nn.Module, blocks: list[Block], data: Any, batches: int,
                 batch_size: int) -> np.ndarray:
    """Loss increase when each block alone is bypassed (measured sensitivity)."""
    batches_list = list(labeled_batches(data, batches, batch_size, "data"))

    def loss() -> float:
        return sum(float(loss_fn(model(x), y, x)) for x, y in batches_list) / len(batches_list)

    base, out = loss(), []
    for block in blocks:
        original = model.get_submodule(block.name)
        set_submodule(model, block.name, Bypass(_activation_module(block.activation),
                                                 _arity(model, block, batches_list[0][0][:1])))
        out.append(loss() - base)
        set_submodule(model, block.name, original)
    return np.array(out)
