"""Quantized modules: an activation quantizer and weight layers that store integer weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeopt.profile.layers import register_macs
from edgeopt.quantization import ops
from edgeopt.quantization.config import Granularity, QuantSpec
from edgeopt.quantization.observers import Observer
from edgeopt.quantization.primitives import choose_qparams, quantize, spec_range, weight_minmax


def _zero_point_dtype(qmin: int, qmax: int) -> torch.dtype:
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    raise ValueError(f"integer range [{qmin}, {qmax}] does not fit 8 bits")


class ActQuant(nn.Module):
    """Observes a tensor during calibration, then fake-quantizes it with frozen parameters."""

    def __init__(self, spec: QuantSpec, observer: Observer) -> None:
        super().__init__()
        self.spec = spec
        self.observer: Observer | None = observer
        self.calls = 0
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.uint8))

    @property
    def frozen(self) -> bool:
        return self.observer is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            self.calls += 1
            return x
        return ops.quantize_dequantize(x, self.scale, self.zero_point)

    @torch.no_grad()
    def freeze(self) -> None:
        """Turn the observed range into a scale and zero point and start quantizing."""
        if self.observer is None:
            return
        low, high = self.observer.range()
        qmin, qmax = spec_range(self.spec, is_weight=False)
        scale, zero_point = choose_qparams(low, high, qmin, qmax, symmetric=self.spec.symmetric,
                                           power_of_two=self.spec.power_of_two_scale)
        self.scale = scale.reshape(())
        self.zero_point = zero_point.reshape(()).to(_zero_point_dtype(qmin, qmax))
        self.observer = None

    def extra_repr(self) -> str:
        if not self.frozen:
            return "observing"
        return f"scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"


@dataclasses.dataclass(frozen=True)
class WeightLayerKind:
    """How a float layer type computes, given its (dequantized) weight and bias."""

    functional: Callable[..., torch.Tensor]
    hyperparameters: Callable[[nn.Module], dict[str, Any]]


def _conv_hyperparameters(layer: nn.Module) -> dict[str, Any]:
    if layer.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode={layer.padding_mode!r}")
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
            "groups": layer.groups}


# The layers whose weights are stored as integers. Extend this table to support more types.
WEIGHT_LAYERS: dict[type[nn.Module], WeightLayerKind] = {
    nn.Linear: WeightLayerKind(F.linear, lambda layer: {}),
    nn.Conv1d: WeightLayerKind(F.conv1d, _conv_hyperparameters),
    nn.Conv2d: WeightLayerKind(F.conv2d, _conv_hyperparameters),
}


class QuantizedWeightLayer(nn.Module):
    """A Linear or Conv whose weight is stored as integers with per-channel scales.

    The bias becomes int32 with scale input_scale * weight_scale once the input's scale is
    known, exactly as the runtime's integer kernels (QLinearConv, QGemm) store it.
    """

    def __init__(self, layer: nn.Module, spec: QuantSpec) -> None:
        super().__init__()
        kind = WEIGHT_LAYERS[type(layer)]
        self.float_type = type(layer).__name__
        self._functional = kind.functional
        self._hyperparameters = kind.hyperparameters(layer)
        self.spec = spec
        weight = layer.weight.detach()
        qmin, qmax = spec_range(spec, is_weight=True)
        low, high = weight_minmax(weight, spec.granularity)
        scale, zero_point = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric,
                                           power_of_two=spec.power_of_two_scale)
        self.register_buffer("weight_q", quantize(weight, scale, zero_point, qmin, qmax)
                             .to(_zero_point_dtype(qmin, qmax)))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point.to(self.weight_q.dtype))
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias_float", bias)
        self.register_buffer("bias_q", None)
        self.register_buffer("bias_scale", None)
        self.register_buffer("bias_zero_point", None)

    @property
    def per_channel(self) -> bool:
        return self.spec.granularity is Granularity.PER_CHANNEL

    def weight(self) -> torch.Tensor:
        return ops.dequantize(self.weight_q, self.weight_scale, self.weight_zero_point, 0)

    def bias(self) -> torch.Tensor | None:
        if self.bias_q is not None:
            return ops.dequantize(self.bias_q, self.bias_scale, self.bias_zero_point, 0)
        return self.bias_float

    @torch.no_grad()
    def quantize_bias(self, input_scale: torch.Tensor) -> None:
        """Store the bias as int32 in the accumulator's scale (input scale x weight scale)."""
        if self.bias_float is None:
            return
        scale = (input_scale * self.weight_scale).reshape(-1).expand_as(self.bias_float).clone()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        qmin, qmax = ops.dtype_range(torch.int32)
        self.bias_q = quantize(self.bias_float, scale, zero, qmin, qmax)
        self.bias_scale, self.bias_zero_point = scale, zero
        self.bias_float = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._functional(x, self.weight(), self.bias(), **self._hyperparameters)

    def stored_parameters(self) -> list[torch.Tensor]:
        """The weights as stored (integers), for size and parameter counts."""
        return [t for t in (self.weight_q, self.bias_q, self.bias_float) if t is not None]

    def extra_repr(self) -> str:
        return f"{self.float_type}, weight={tuple(self.weight_q.shape)} {self.weight_q.dtype}"


@register_macs(QuantizedWeightLayer)
def _quantized_layer_macs(layer: QuantizedWeightLayer, inputs: tuple, output: torch.Tensor) -> int:
    # every output element needs one multiply-add per weight of its output channel
    return output.numel() * layer.weight_q[0].numel()
