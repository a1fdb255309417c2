"""Graphs for models torch.fx cannot trace symbolically (e.g. `transformers` classes).

torch.export captures them as ATen calls with weights as attributes; this module lifts each
functional conv / linear / batch-norm / embedding call back into an nn.Module at the weight's own
path, so the same graph surgery (BN folding, quantizer placement, layer swaps) serves both kinds.
Every input axis the model lets vary (batch, sequence length) stays dynamic in the graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.errors import ModelError

aten = torch.ops.aten


def export_graph(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Capture `model` with torch.export and lift its conv/linear/BN calls into modules."""
    if example.shape[0] < 2:  # a batch of one would be specialized into the graph
        example = torch.cat([example, example])
    # Every axis may vary (batch, sequence length ...) unless the model fixes it: Dim.AUTO
    # keeps what the model allows dynamic and specializes the rest without an error.
    axes = {axis: torch.export.Dim.AUTO for axis in range(example.dim())}
    try:
        program = torch.export.export(model, (example,), strict=False, dynamic_shapes=(axes,))
    except Exception as exc:  # export fails in many ways; all mean the same to a user
        raise ModelError(
            f"cannot capture {type(model).__name__} as a graph (torch.fx and torch.export both "
            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc
    unlifted = program.module()
    gm = fx.GraphModule(unlifted, unlifted.graph)  # a plain GraphModule: .eval()/.train() work
    lift_layers(gm)
    return gm


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    return None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _conv(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    weight, bias = _attr(gm, node.args[1]), _attr(gm, _arg(node, 2, "bias", None))
    if weight is None:
        return None
    kind = {3: nn.Conv1d, 4: nn.Conv2d}.get(weight.dim())
    if kind is None:
        return None
    groups = _arg(node, 6, "groups", 1)
    padding = _arg(node, 4, "padding", 0)
    if isinstance(padding, str):
        return None
    layer = kind(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                 stride=_arg(node, 3, "stride", 1), padding=padding,
                 dilation=_arg(node, 5, "dilation", 1), groups=groups, bias=bias is not None)
    return _fill(layer, weight, bias)


def _linear(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    weight, bias = _attr(gm, node.args[1]), _attr(gm, _arg(node, 2, "bias", None))
    if weight is None:
        return None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    return _fill(layer, weight, bias)


def _batch_norm(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    weight, bias, mean, var = (_attr(gm, a) for a in node.args[1:5])
    training = node.args[5] if len(node.args) > 5 else False
    value = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if mean is None or var is None or training or value is None:
        return None
    kind = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(value.dim())
    if kind is None:
        return None
    layer = kind(mean.shape[0], eps=node.args[7], affine=weight is not None)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)
    return _fill(layer, weight, bias) if weight is not None else layer.eval()


@torch.no_grad()
def _fill(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer.eval()


@torch.no_grad()
def _embedding(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    weight = _attr(gm, node.args[0])
    if weight is None or weight.dim() != 2 or _arg(node, 4, "sparse", False):
        return None
    padding = _arg(node, 2, "padding_idx", -1)
    layer = nn.Embedding(weight.shape[0], weight.shape[1],
                         padding_idx=None if padding < 0 else padding)
    layer.weight.copy_(weight)
    return layer.eval()


@dataclasses.dataclass(frozen=True)
class Lifter:
    """How one functional op becomes a module: the maker, which argument holds the weight (its
    attribute path names the module) and which one is the module's input."""

    make: Callable[[fx.GraphModule, fx.Node], nn.Module | None]
    weight_arg: int = 1
    input_arg: int = 0


_LIFTERS: dict[Any, Lifter] = {
    aten.conv2d.default: Lifter(_conv),
    aten.conv1d.default: Lifter(_conv),
    aten.linear.default: Lifter(_linear),
    aten.batch_norm.default: Lifter(_batch_norm, weight_arg=3),  # running_mean: always there
    aten.embedding.default: Lifter(_embedding, weight_arg=0, input_arg=1),
}


def lift_layers(gm: fx.GraphModule) -> int:
    """Replace functional layer calls whose weights are attributes by module calls; count them."""
    lifted = 0
    for node in list(gm.graph.nodes):
        lifter = _LIFTERS.get(node.target) if node.op == "call_function" else None
        module = lifter.make(gm, node) if lifter else None
        if module is None:
            continue
        weight_node = node.args[lifter.weight_arg]
        path = str(weight_node.target).rpartition(".")[0] or f"lifted_{lifted}"
        _install(gm, path, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (node.args[lifter.input_arg],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        lifted += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return lifted


def _install(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, child, module)
