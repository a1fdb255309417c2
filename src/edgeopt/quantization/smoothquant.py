"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights.

For Linear layers sharing an input X, Y = (X / s) (s W) is the same function; with
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) the per-channel activation outliers shrink (easy to
quantize per tensor) and the weights absorb them (quantized per channel anyway). The division is
folded into the preceding LayerNorm (or Linear) when only these Linears read it, else exported
as one Mul.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.modules import ChannelScale

aten = torch.ops.aten


@torch.no_grad()
def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float
                      ) -> torch.Tensor:
    """s_j = act_j^alpha / weight_j^(1 - alpha); 1 where either maximum is zero."""
    ok = (act_absmax > 0) & (weight_absmax > 0)
    s = act_absmax.clamp(min=1e-12).pow(alpha) / weight_absmax.clamp(min=1e-12).pow(1 - alpha)
    return torch.where(ok, s.clamp(min=1e-5), torch.ones_like(s))


def linear_groups(gm: fx.GraphModule, names: list[str]) -> dict[fx.Node, list[fx.Node]]:
    """Quantized Linear calls grouped by the node they read."""
    wanted, groups = set(names), {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in wanted and isinstance(
                gm.get_submodule(str(node.target)), nn.Linear) and isinstance(node.args[0], fx.Node):
            groups.setdefault(node.args[0], []).append(node)
    return groups


# (first Linear's name, the group's Linears) -> (factor per input channel, notes) or None
ChooseScale = Callable[[str, list[nn.Linear]], "tuple[torch.Tensor, dict[str, Any]] | None"]


@torch.no_grad()
def rescale_groups(gm: fx.GraphModule, names: list[str], choose: ChooseScale, prefix: str
                   ) -> dict[str, dict[str, Any]]:
    """For every group of Linears sharing an input, multiply their input columns by the factor
    `choose` returns (None: leave the group alone) and divide the input by it: folded into the
    producer where possible, else a Mul. Returns per-layer notes for the statistics."""
    notes: dict[str, dict[str, Any]] = {}
    for count, (source, linears) in enumerate(linear_groups(gm, names).items()):
        layers = [gm.get_submodule(str(n.target)) for n in linears]
        chosen = choose(str(linears[0].target), layers)
        if chosen is None:
            continue
        s, extra = chosen
        for layer in layers:
            layer.weight.mul_(s)
        folded = _fold_into_layer_norm(gm, source, s, linears)
        if not folded:
            _insert_scale(gm, source, linears, 1.0 / s, f"{prefix}_{count}")
        for node in linears:
            notes[str(node.target)] = {f"{prefix}_scale_min": float(s.min()),
                                       f"{prefix}_scale_max": float(s.max()),
                                       f"{prefix}_folded": folded, **extra}
    gm.graph.lint()
    gm.recompile()
    return notes


def smooth(gm: fx.GraphModule, names: list[str], act_absmax: dict[str, torch.Tensor],
           alpha: float) -> dict[str, dict[str, Any]]:
    """SmoothQuant every group; `act_absmax` maps a group's first Linear to its input's
    per-channel absolute maximum."""

    def choose(name: str, layers: list[nn.Linear]) -> tuple[torch.Tensor, dict] | None:
        act = act_absmax.get(name)
        if act is None:
            return None
        weight = torch.stack([layer.weight.abs().amax(dim=0) for layer in layers]).amax(dim=0)
        s = smoothing_factors(act, weight, alpha)
        return s, {"smoothquant_act_absmax_before": float(act.max()),
                   "smoothquant_act_absmax_after": float((act / s).max())}

    return rescale_groups(gm, names, choose, "smoothquant")


def _layer_norm_params(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, Any] | None:
    module = qgraph._module(gm, node)
    if isinstance(module, nn.LayerNorm):
        return (module.weight, module.bias) if module.weight is not None else None
    if node.op == "call_function" and node.target is aten.layer_norm.default:
        params = [_attribute(gm, a) for a in node.args[2:4]]
        return (params[0], params[1]) if params[0] is not None else None
    return None


def _attribute(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value: Any = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def _fold_into_layer_norm(gm: fx.GraphModule, source: fx.Node, s: torch.Tensor,
                          linears: list[fx.Node]) -> bool:
    """Divide the producer's output channels by s: a LayerNorm's affine parameters or a
    preceding Linear's rows, when only the smoothed Linears read it."""
    if set(source.users) != set(linears):
        return False
    producer = qgraph._module(gm, source)
    if isinstance(producer, nn.Linear):
        producer.weight.data.div_(s.reshape(-1, 1))
        if producer.bias is not None:
            producer.bias.data.div_(s)
        return True
    params = _layer_norm_params(gm, source)
    if params is None:
        return False
    weight, bias = params
    weight.data.div_(s)
    if bias is not None:
        bias.data.div_(s)
    return True


def _insert_scale(gm: fx.GraphModule, source: fx.Node, linears: list[fx.Node],
                  factor: torch.Tensor, name: str) -> None:
    gm.add_submodule(name, ChannelScale(factor))
    with gm.graph.inserting_after(source):
        scaled = gm.graph.call_module(name, (source,))
    for node in linears:
        node.args = (scaled, *node.args[1:])
