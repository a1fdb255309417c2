"""Which module a float Linear/Conv becomes, by its weight spec: a table, not a type chain.

integer uniform -> QuantizedWeightLayer (nearest or stochastic rounding), per-group Linear ->
GroupedLinear, Linear quantized dynamically -> DynamicLinear, log2 levels ->
QuantizedWeightLayer on the int8 grid when they fit (<= 4 bits), else a CodebookLayer, k-means
-> CodebookLayer, float formats -> FloatFormatLayer, QAT -> QATWeightLayer.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.config import (
    Granularity,
    Levels,
    Method,
    NumberFormat,
    QuantConfig,
    QuantSpec,
    Rounding,
)
from edgeopt.quantization.dynamic import DynamicLinear
from edgeopt.quantization.modules import GroupedLinear, QATWeightLayer, QuantizedWeightLayer
from edgeopt.quantization.nonuniform import kmeans_codebook, log2_magnitudes, log2_quantize
from edgeopt.quantization.primitives import quantize_stochastic
from edgeopt.quantization.simulated import CodebookLayer, FloatFormatLayer

LOG2_INT8_BITS = 4  # sign + 2^0..2^6: every level is an int8 value, so integer kernels run it


def spec_for(name: str, layer: nn.Module, config: QuantConfig) -> QuantSpec:
    """The weight spec of one layer: the first matching override, else config.weights."""
    for pattern, spec in config.weight_overrides.items():
        if qgraph.matches(name, layer, pattern):
            return spec
    return config.weights


def runs_on_integers(spec: QuantSpec) -> bool:
    """Whether a layer with this weight spec runs on integer kernels (gets input quantizers)."""
    if spec.dtype.is_float or spec.levels is Levels.KMEANS:
        return False
    return spec.levels is Levels.UNIFORM or spec.bits <= LOG2_INT8_BITS


@dataclasses.dataclass
class LayerBuilder:
    """Builds the quantized version of each float layer for one config."""

    config: QuantConfig
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        self.generator.manual_seed(self.config.advanced.seed)

    def build(self, layer: nn.Module, spec: QuantSpec) -> nn.Module:
        if spec.dtype.is_float:
            return FloatFormatLayer(layer, spec.dtype, self._input_format(spec))
        if spec.levels is Levels.KMEANS:
            return self._kmeans(layer, spec)
        if spec.levels is Levels.LOG2:
            return self._log2(layer, spec)
        if self.config.method is Method.QAT:
            return QATWeightLayer(layer, spec,
                                  stochastic=self.config.rounding is Rounding.STOCHASTIC)
        if spec.granularity is Granularity.PER_GROUP and isinstance(layer, nn.Linear):
            quantized: nn.Module = GroupedLinear(layer, spec)
        elif self.config.method is Method.DYNAMIC and isinstance(layer, nn.Linear):
            quantized = DynamicLinear(layer, spec)
        else:
            quantized = QuantizedWeightLayer(layer, spec)
        if self.config.rounding is Rounding.STOCHASTIC:
            self._round_stochastically(quantized)
        return quantized

    def _input_format(self, spec: QuantSpec) -> NumberFormat | None:
        """Float-format layers round their inputs too, except for weight-only quantization."""
        acts = self.config.activations
        if self.config.method is Method.WEIGHT_ONLY:
            return None
        return acts.dtype if acts is not None and acts.dtype.is_float else spec.dtype

    @staticmethod
    def _kmeans(layer: nn.Module, spec: QuantSpec) -> nn.Module:
        """One codebook per layer; per-channel granularity clusters each output channel's
        weights divided by its absolute maximum and keeps that maximum as a channel scale
        (channels of very different ranges, e.g. depthwise, then share the codebook well)."""
        weight = layer.weight.detach().float()
        scale = None
        if spec.granularity is Granularity.PER_CHANNEL:
            scale = weight.abs().reshape(weight.shape[0], -1).amax(dim=1).clamp(min=1e-12)
            weight = weight / scale.reshape((-1,) + (1,) * (weight.dim() - 1))
        codebook, codes = kmeans_codebook(weight, 2**spec.bits)
        return CodebookLayer(layer, codes, codebook, spec.bits, channel_scale=scale,
                             levels="kmeans")

    def _log2(self, layer: nn.Module, spec: QuantSpec) -> nn.Module:
        levels, scale = log2_quantize(layer.weight.detach().float(), spec.bits)
        if spec.bits <= LOG2_INT8_BITS:
            int8_spec = dataclasses.replace(spec, bits=8, symmetric=True, signed=True,
                                            granularity=Granularity.PER_CHANNEL)
            quantized = QuantizedWeightLayer(layer, int8_spec)
            quantized.spec = spec  # statistics report the code width, not the container
            quantized.set_integer_weight(levels, scale)
            return quantized
        magnitudes = torch.cat([torch.zeros(1), torch.exp2(torch.arange(
            log2_magnitudes(spec.bits), dtype=torch.float32))])
        codebook = torch.cat([-magnitudes.flip(0)[:-1], magnitudes])
        codes = torch.bucketize(levels, codebook)  # exact: every level is in the codebook
        return CodebookLayer(layer, codes, codebook, spec.bits, channel_scale=scale,
                             levels="log2")

    @torch.no_grad()
    def _round_stochastically(self, layer: nn.Module) -> None:
        weight = layer.__dict__["reference_weight"]
        scale, zero, qmin, qmax = layer.integer_grid()
        q = quantize_stochastic(weight.reshape(scale.shape), scale, zero, qmin, qmax,
                                self.generator)
        layer.set_integer_weight(q.float())
