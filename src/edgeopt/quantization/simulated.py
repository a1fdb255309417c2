"""Weight layers simulated in float: float number formats and codebook (non-uniform) weights.

Neither runs on the runtime's integer kernels; both export as float ONNX. A float-format layer
also rounds its input to the format, so it simulates computing in that format (with a float32
accumulator, as tensor cores do); the input casts export as ONNX Cast pairs, which ONNX Runtime
executes, so simulated and deployed outputs agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeopt.profile.layers import register_macs
from edgeopt.quantization.config import NumberFormat
from edgeopt.quantization.formats import (
    FORMATS,
    activation_round_trip,
    cast_round_trip,
    weight_format_scale,
)
from edgeopt.quantization.modules import WEIGHT_LAYERS

_FP8 = (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2)


class _SimulatedLayer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        kind = WEIGHT_LAYERS[type(layer)]
        self.float_type = type(layer).__name__
        self._functional = kind.functional
        self._hyperparameters = kind.hyperparameters(layer)
        self.reference_weight = layer.weight.detach().clone()  # read (and dropped) by the stats
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._functional(x, self.weight(), self.bias, **self._hyperparameters)


class FloatFormatLayer(_SimulatedLayer):
    """A Linear/Conv whose weights and inputs are rounded to a float format (fp16, bf16, fp8,
    TF32). Weights are stored in the format's dtype (fp8 with a per-channel scale)."""

    def __init__(self, layer: nn.Module, fmt: NumberFormat, input_format: NumberFormat | None
                 ) -> None:
        super().__init__(layer)
        self.format = fmt
        self.input_format = input_format  # None: inputs stay float32 (weight-only)
        if fmt in _FP8 or input_format in _FP8:
            self.min_opset = 21  # ONNX Cast to float8 types
        weight = layer.weight.detach().float()
        scale = weight_format_scale(weight, fmt)
        spec = FORMATS[fmt]
        stored = cast_round_trip(weight / scale, fmt)
        self.register_buffer("weight_stored", stored.to(spec.dtype) if spec.dtype else stored)
        self.register_buffer("weight_scale", scale)

    def weight(self) -> torch.Tensor:
        return self.weight_stored.to(torch.float32) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_format is not None:
            x = activation_round_trip(x, self.input_format)
        return super().forward(x)

    def stored_bytes(self) -> int:
        return self.weight_stored.numel() * FORMATS[self.format].bits // 8 + (
            4 * self.weight_scale.numel() if FORMATS[self.format].scaled else 0)

    def extra_repr(self) -> str:
        inputs = self.input_format.value if self.input_format else "float32"
        return f"{self.float_type}, format={self.format.value}, inputs={inputs}"


class CodebookLayer(_SimulatedLayer):
    """A Linear/Conv whose weights are codes into a codebook (look-up table), optionally times a
    per-output-channel scale: weight = codebook[codes] * channel_scale."""

    def __init__(self, layer: nn.Module, codes: torch.Tensor, codebook: torch.Tensor, bits: int,
                 channel_scale: torch.Tensor | None = None, levels: str = "kmeans") -> None:
        super().__init__(layer)
        self.bits, self.levels = bits, levels
        self.register_buffer("codes", codes.to(torch.uint8 if bits <= 8 else torch.int16))
        self.register_buffer("codebook", codebook.float())
        shape = (-1,) + (1,) * (codes.dim() - 1)
        self.register_buffer("channel_scale", None if channel_scale is None
                             else channel_scale.float().reshape(shape))

    def weight(self) -> torch.Tensor:
        values = self.codebook[self.codes.long()]
        return values * self.channel_scale if self.channel_scale is not None else values

    def stored_bytes(self) -> int:
        from edgeopt.quantization.nonuniform import codebook_bytes

        scales = 0 if self.channel_scale is None else self.channel_scale.numel()
        return codebook_bytes(self.codes.numel(), self.bits, self.codebook.numel() + scales)

    def extra_repr(self) -> str:
        return f"{self.float_type}, levels={self.levels}, bits={self.bits}, " \
               f"codebook={self.codebook.numel()}"


@register_macs(FloatFormatLayer, CodebookLayer)
def _simulated_layer_macs(layer: _SimulatedLayer, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * layer.weight()[0].numel()
