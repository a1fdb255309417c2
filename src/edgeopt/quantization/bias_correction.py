"""Bias correction: undo the shift in a layer's mean output that weight quantization causes.

Empirical: E[y_float] - E[y_quantized] per output channel, measured on calibration data.
Analytical (data-free, Nagel et al. 2019): -(W_q - W) E[x], with E[x] from the batch-norm
statistics of the layer that produces x: a channel N(beta, gamma^2) through a ReLU has mean
gamma * phi(beta / gamma) + beta * Phi(beta / gamma); through ReLU6 (a clamp at u) subtract the
same for N(beta - u, gamma^2).
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.modules import WEIGHT_LAYERS, ChannelClamp

_SKIP = (nn.Dropout, nn.Identity)


@torch.no_grad()
def empirical_bias_shift(float_output: torch.Tensor, quantized_output: torch.Tensor,
                         channel_dim: int) -> torch.Tensor:
    """Per-channel mean of float minus quantized outputs: what to add to the bias."""
    diff = (float_output - quantized_output).float().movedim(channel_dim, 0)
    return diff.reshape(diff.shape[0], -1).mean(dim=1)


@torch.no_grad()
def expected_relu_gaussian(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[max(0, X)] for X ~ N(mean, std^2), elementwise (std 0: max(0, mean))."""
    std = std.float()
    safe = std.clamp(min=1e-12)
    z = mean / safe
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return torch.where(std > 0, safe * pdf + mean * cdf, mean.clamp(min=0))


def layer_kind(layer: nn.Module) -> str:
    """'linear', 'conv' (groups 1), 'depthwise' or 'grouped', for float and quantized layers."""
    kind = getattr(layer, "float_type", type(layer).__name__)
    if kind == "Linear":
        return "linear"
    groups = getattr(layer, "groups", None) or getattr(layer, "_hyperparameters", {}).get("groups", 1)
    weight = layer.weight() if callable(layer.weight) else layer.weight
    if groups == 1:
        return "conv"
    return "depthwise" if weight.shape[1] == 1 and groups == weight.shape[0] else "grouped"


@torch.no_grad()
def weight_times_mean(weight: torch.Tensor, mean: torch.Tensor, kind: str) -> torch.Tensor:
    """W E[x] per output channel for an input with per-channel mean (away from padding)."""
    if kind == "linear":
        return weight @ mean
    if kind == "depthwise":
        return weight.reshape(weight.shape[0], -1).sum(dim=1) * mean
    if kind != "conv":
        raise ValueError(f"no analytical correction for {kind} layers")
    return weight.reshape(weight.shape[0], weight.shape[1], -1).sum(dim=2) @ mean


@torch.no_grad()
def analytical_bias_shift(float_weight: torch.Tensor, quantized_weight: torch.Tensor,
                          input_mean: torch.Tensor, kind: str) -> torch.Tensor:
    """-(W_q - W) E[x]: what to add to the bias so the mean output is unchanged."""
    return -weight_times_mean(quantized_weight - float_weight, input_mean, kind)


def input_means(gm: fx.GraphModule, names: list[str],
                bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """E[input] per channel of each layer fed (through at most a ReLU/ReLU6) by a layer whose
    output statistics are known from its folded batch norm."""
    wanted, means = set(names), {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in wanted:
            continue
        source, clip = node.args[0], None
        while isinstance(source, fx.Node) and isinstance(qgraph._module(gm, source), _SKIP):
            source = source.args[0]
        if isinstance(source, fx.Node) and (qgraph.is_relu(gm, source)
                                            or qgraph.is_relu6(gm, source)):
            module = qgraph._module(gm, source)
            upper = qgraph.clip_upper(gm, source)
            clip = (module.upper if isinstance(module, ChannelClamp)
                    else "relu" if upper == float("inf") else upper)
            source = source.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        producer = str(source.target)
        if producer not in bn_stats or type(qgraph._module(gm, source)) not in WEIGHT_LAYERS:
            continue
        beta, gamma = bn_stats[producer]
        mean = _clipped_mean(beta, gamma, clip)
        if _in_channels(gm.get_submodule(str(node.target))) == mean.numel():
            means[str(node.target)] = mean
    return means


def _clipped_mean(beta: torch.Tensor, gamma: torch.Tensor, clip: object) -> torch.Tensor:
    if clip is None:
        return beta
    relu = expected_relu_gaussian(beta, gamma)
    if clip == "relu":
        return relu
    upper = clip if isinstance(clip, torch.Tensor) else torch.full_like(beta, float(clip))
    return relu - expected_relu_gaussian(beta - upper, gamma)


def _in_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.in_channels
