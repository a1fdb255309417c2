"""Cross-layer equalization and bias absorption (Nagel et al. 2019, data-free quantization).

Two consecutive layers joined by a positively homogeneous op (ReLU, max-pool, identity) compute
the same function when output channel c of the first is divided by s_c and input channel c of
the second multiplied by it. Choosing s_c = sqrt(r1_c * r2_c) / r2_c gives both layers the same
per-channel weight range sqrt(r1_c * r2_c), which per-tensor (and low-bit) quantization needs.
ReLU6 is not homogeneous: it becomes a per-channel clamp at 6 / s_c, which is exact but which
ONNX Runtime runs as Relu + Min in float, keeping the first layer of the pair off the integer
kernels. With calibration inputs the clamp stays uniform instead: each channel's scale is bounded
by the largest value its ReLU6 output reached (m_c), s_c >= m_c * max(s) / 6, so on those inputs
no channel exceeds 6 / max(s), and the clamp becomes one Clip(0, 6 / max(s)) that the runtime
folds into the integer kernel (channels that saturate at 6 keep the largest scale). A value
above that clip on other inputs would also be saturated by the activation quantizer after it,
whose range the clip bounds. `relu6_to_relu` instead makes it a ReLU, as the DFQ paper does.
Depthwise-separable blocks (depthwise -> pointwise -> depthwise) chain through the same rule.

Bias absorption then moves c = max(0, beta - 3 gamma) (what the ReLU almost never cuts, from the
folded batch-norm statistics) from the first layer's bias into the second's, shrinking the
activation range; done only where the second layer has no padding, so it stays exact.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.bias_correction import layer_kind, weight_times_mean
from edgeopt.quantization.modules import WEIGHT_LAYERS, ChannelClamp

_HOMOGENEOUS = (nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Identity)
BnStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass
class Pair:
    """Two layers whose shared channels can be rescaled without changing the function."""

    first: str
    second: str
    clamps: list[str]  # ChannelClamp modules between them (former ReLU6)
    only_relu: bool  # nothing but ReLU / max-pool between (bias absorption stays exact)


@torch.no_grad()
def equalization_scales(range1: torch.Tensor, range2: torch.Tensor) -> torch.Tensor:
    """s with range1 / s == range2 * s == sqrt(range1 * range2); 1 where a range is zero."""
    ok = (range1 > 0) & (range2 > 0)
    s = torch.sqrt(range1 * range2) / range2.clamp(min=1e-30)
    return torch.where(ok, s, torch.ones_like(s))


def output_ranges(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(dim=1)


def _depthwise(layer: nn.Module) -> bool:
    return not isinstance(layer, nn.Linear) and layer.groups > 1


def input_ranges(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().abs()
    if _depthwise(layer):
        return w.reshape(w.shape[0], -1).amax(dim=1)
    return w.transpose(0, 1).reshape(w.shape[1], -1).amax(dim=1)


def _accepts(first: nn.Module, second: nn.Module) -> bool:
    """Whether second's input channels are first's output channels, one to one."""
    channels = first.weight.shape[0]
    if isinstance(second, nn.Linear):
        return isinstance(first, nn.Linear) and second.in_features == channels
    if isinstance(first, nn.Linear):
        return False
    if second.groups == 1:
        return second.in_channels == channels
    return second.groups == second.in_channels == second.out_channels == channels


def find_pairs(gm: fx.GraphModule, names: list[str], relu6_to_relu: bool = False) -> list[Pair]:
    """Layer pairs joined only by single-use ReLU/ReLU6/max-pool/identity nodes. A ReLU6 between
    them becomes a per-channel clamp (exact), or a plain ReLU with `relu6_to_relu`."""
    wanted, pairs = set(names), []
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in wanted:
            continue
        current, between = node, []
        while len(current.users) == 1:
            user = next(iter(current.users))
            module = qgraph._module(gm, user)
            if module is not None and type(module) in WEIGHT_LAYERS:
                first = gm.get_submodule(str(node.target))
                if str(user.target) in wanted and user.args[0] is current and _accepts(first, module):
                    pairs.append(_pair(gm, str(node.target), str(user.target), between,
                                       relu6_to_relu))
                break
            if not (qgraph.is_relu(gm, user) or qgraph.is_relu6(gm, user)
                    or isinstance(module, _HOMOGENEOUS)):
                break
            between.append(user)
            current = user
    return pairs


def _pair(gm: fx.GraphModule, first: str, second: str, between: list[fx.Node],
          relu6_to_relu: bool) -> Pair:
    clamps, only_relu = [], True
    channel_dim = -1 if isinstance(gm.get_submodule(first), nn.Linear) else 1
    for index, node in enumerate(between):
        if qgraph.is_relu6(gm, node) and relu6_to_relu:
            with gm.graph.inserting_after(node):
                relu = gm.graph.call_function(torch.relu, (node.args[0],))
            node.replace_all_uses_with(relu)
            gm.graph.erase_node(node)
            between[index] = relu
        elif qgraph.is_relu6(gm, node):
            between[index] = _to_channel_clamp(gm, node, gm.get_submodule(first).weight.shape[0],
                                               channel_dim, f"{first.replace('.', '_')}_clamp")
            clamps.append(str(between[index].target))
            only_relu = False
    return Pair(first, second, clamps, only_relu)


def _to_channel_clamp(gm: fx.GraphModule, node: fx.Node, channels: int, channel_dim: int,
                      name: str) -> fx.Node:
    gm.add_submodule(name, ChannelClamp(torch.full((channels,), 6.0), channel_dim))
    with gm.graph.inserting_after(node):
        clamp = gm.graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(clamp)
    gm.graph.erase_node(node)
    return clamp


@torch.no_grad()
def _rescale(gm: fx.GraphModule, pair: Pair, s: torch.Tensor) -> None:
    first, second = gm.get_submodule(pair.first), gm.get_submodule(pair.second)
    out_shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(s.reshape(out_shape))
    if first.bias is not None:
        first.bias.div_(s)
    for name in pair.clamps:
        gm.get_submodule(name).upper.div_(s)
    if _depthwise(second):
        second.weight.mul_(s.reshape((-1,) + (1,) * (second.weight.dim() - 1)))
    else:
        second.weight.mul_(s.reshape((1, -1) + (1,) * (second.weight.dim() - 2)))


@torch.no_grad()
def clamp_maxima(gm: fx.GraphModule, pairs: list[Pair], batches: list[torch.Tensor],
                 samples: int = 32) -> dict[str, torch.Tensor]:
    """Per pair with clamps: each channel's largest clamp output on up to `samples` inputs."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for pair in pairs:
        for name in pair.clamps:
            clamp = gm.get_submodule(name)

            def hook(module: nn.Module, args: tuple, out: torch.Tensor, first: str = pair.first
                     ) -> None:
                dims = [d for d in range(out.dim()) if d != module.channel_dim % out.dim()]
                peak = out.detach().float().amax(dim=dims)
                seen[first] = peak if first not in seen else torch.maximum(seen[first], peak)

            hooks.append(clamp.register_forward_hook(hook))
    try:
        taken = 0
        for batch in batches:
            if taken >= samples or not hooks:
                break
            gm(batch[: samples - taken])
            taken += min(len(batch), samples - taken)
    finally:
        for handle in hooks:
            handle.remove()
    return seen


def bounded_scales(total: torch.Tensor, s: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """The step s, raised where needed so the total scale t = total * s keeps
    t_c >= peak_c * max(t) / 6: no channel then exceeds the smallest clip 6 / max(t)."""
    t = total * s
    bounded = torch.maximum(t, peak.clamp(min=0.0, max=6.0) * t.max() / 6.0)
    return bounded / total


@torch.no_grad()
def equalize(gm: fx.GraphModule, names: list[str], iterations: int, bn_stats: BnStats,
             relu6_to_relu: bool = False, batches: list[torch.Tensor] | None = None
             ) -> tuple[list[Pair], dict[str, torch.Tensor], int]:
    """Equalize every pair, sweeping until the scales settle; returns the pairs, each first
    layer's total scale and the sweeps done. Updates `bn_stats` of rescaled layers. With
    `batches`, ReLU6 between a pair stays one uniform clip the runtime fuses (module doc)."""
    pairs = find_pairs(gm, names, relu6_to_relu)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    peaks = clamp_maxima(gm, pairs, batches) if batches else {}
    total = {p.first: torch.ones(gm.get_submodule(p.first).weight.shape[0]) for p in pairs}
    sweeps = 0
    for sweeps in range(1, iterations + 1):  # noqa: B007  (the count is returned)
        change = 0.0
        for pair in pairs:
            s = equalization_scales(output_ranges(gm.get_submodule(pair.first)),
                                    input_ranges(gm.get_submodule(pair.second)))
            if pair.first in peaks:
                s = bounded_scales(total[pair.first], s, peaks[pair.first])
            _rescale(gm, pair, s)
            total[pair.first] *= s
            change = max(change, float(torch.log(s).abs().max()) if s.numel() else 0.0)
        if change < 1e-4:
            break
    for pair in pairs:
        if pair.first in peaks:
            _uniform_clamps(gm, pair)
    for name, s in total.items():
        if name in bn_stats:
            beta, gamma = bn_stats[name]
            bn_stats[name] = (beta / s, gamma / s)
    return pairs, total, sweeps


def _uniform_clamps(gm: fx.GraphModule, pair: Pair) -> None:
    """Each per-channel clamp of the pair becomes one Clip at its smallest bound."""
    for name in pair.clamps:
        upper = float(gm.get_submodule(name).upper.min())
        qgraph._replace_submodule(gm, name, nn.Hardtanh(0.0, upper))
    pair.clamps = []
    gm.recompile()


def _no_padding(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or all(p == 0 for p in layer.padding)


@torch.no_grad()
def absorb_biases(gm: fx.GraphModule, pairs: list[Pair], bn_stats: BnStats
                  ) -> dict[str, float]:
    """Move max(0, beta - 3 gamma) from each first layer's bias into the second's; returns the
    largest absorbed amount per first layer."""
    absorbed = {}
    for pair in pairs:
        first, second = gm.get_submodule(pair.first), gm.get_submodule(pair.second)
        if not pair.only_relu or pair.first not in bn_stats or first.bias is None:
            continue
        if not _no_padding(second):
            continue
        beta, gamma = bn_stats[pair.first]
        c = torch.clamp(beta - 3 * gamma, min=0.0)
        if not bool((c > 0).any()):
            continue
        first.bias.sub_(c)
        bn_stats[pair.first] = (beta - c, gamma)
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(second.weight.shape[0]))
        second.bias.add_(weight_times_mean(second.weight.detach(), c, layer_kind(second)))
        absorbed[pair.first] = float(c.max())
    return absorbed
