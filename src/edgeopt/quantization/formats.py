"""Float number formats, simulated by a cast round trip with round-to-nearest-even.

fp16, bf16 and fp8 (E4M3, E5M2) cast through the torch dtype (saturating to the largest finite
value first, as ONNX Cast does with saturate=1); TF32 (fp32 with a 10-bit mantissa) has no
dtype and is rounded with a Veltkamp split, which uses only float multiplies and subtractions
and so exports to ONNX unchanged. fp8 tensors are scaled into the format's range first (a
per-channel scale for weights, the tensor's own absolute maximum for activations).
"""

from __future__ import annotations

import dataclasses

import torch

from edgeopt.quantization.config import NumberFormat


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    dtype: torch.dtype | None  # None: rounded within float32 (TF32)
    max_value: float  # the largest finite value
    mantissa_bits: int  # explicit fraction bits
    bits: int  # storage width
    scaled: bool  # fp8: scale into the range before the cast


FORMATS: dict[NumberFormat, FloatFormat] = {
    NumberFormat.FP16: FloatFormat(torch.float16, 65504.0, 10, 16, False),
    NumberFormat.BF16: FloatFormat(torch.bfloat16, float(torch.finfo(torch.bfloat16).max), 7, 16,
                                   False),
    NumberFormat.FP8_E4M3: FloatFormat(torch.float8_e4m3fn, 448.0, 3, 8, True),
    NumberFormat.FP8_E5M2: FloatFormat(torch.float8_e5m2, 57344.0, 2, 8, True),
    NumberFormat.TF32: FloatFormat(None, float(torch.finfo(torch.float32).max), 10, 19, False),
}


def round_mantissa(x: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Round float32 values to `mantissa_bits` fraction bits (Veltkamp split, nearest)."""
    sigma = float(2 ** (23 - mantissa_bits) + 1)
    c = x * sigma
    return c - (c - x)


def cast_round_trip(x: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """`x` (float32) rounded to `fmt` and back, saturating at the format's largest value."""
    spec = FORMATS[fmt]
    if spec.dtype is None:
        return round_mantissa(x, spec.mantissa_bits)
    clipped = torch.clamp(x, -spec.max_value, spec.max_value)
    return clipped.to(spec.dtype).to(torch.float32)


def scaled_round_trip(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:
    """Cast round trip of x / scale, times scale (scale broadcast against x)."""
    return cast_round_trip(x / scale, fmt) * scale


@torch.no_grad()
def weight_format_scale(weight: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """Per-output-channel scale putting each channel's absolute maximum at the format's largest
    value (fp8); ones for formats that need no scale. Shaped to broadcast against `weight`."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    spec = FORMATS[fmt]
    if not spec.scaled:
        return torch.ones(weight.shape[0], dtype=torch.float32).reshape(shape)
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (torch.clamp(amax, min=1e-12) / spec.max_value).reshape(shape)


def activation_round_trip(x: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """An activation in `fmt`: fp8 scaled by the tensor's own absolute maximum (dynamic)."""
    spec = FORMATS[fmt]
    if not spec.scaled:
        return cast_round_trip(x, fmt)
    scale = torch.clamp(x.abs().max(), min=1e-12) / spec.max_value
    return scaled_round_trip(x, fmt, scale)
