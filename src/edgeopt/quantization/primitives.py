"""Pure quantization math: integer ranges, scale/zero-point choice, (fake) quantization."""

from __future__ import annotations

import math

import torch

from edgeopt.quantization.config import Granularity, QuantSpec


def integer_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Smallest and largest integer of a `bits`-wide type; narrow drops the most negative value."""
    if signed:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return (low + 1 if narrow else low), high
    return 0, 2**bits - 1


def spec_range(spec: QuantSpec, *, is_weight: bool) -> tuple[int, int]:
    """The integer range a spec stores into (weights signed, activations unsigned by default)."""
    signed = spec.signed if spec.signed is not None else is_weight
    narrow = spec.narrow_range if spec.narrow_range is not None else (signed and spec.symmetric)
    return integer_range(spec.bits, signed, narrow)


@torch.no_grad()
def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    qmin: int,
    qmax: int,
    *,
    symmetric: bool,
    power_of_two: bool = False,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping [min_val, max_val] (widened to contain 0) onto [qmin, qmax].

    Works elementwise, so per-channel statistics give per-channel parameters.
    """
    min_val = torch.clamp(min_val.float(), max=0.0)
    max_val = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        bound = torch.maximum(-min_val, max_val)
        if qmin < 0:  # signed: zero at 0, the range is symmetric around it
            scale = bound / ((qmax - qmin) / 2)
            zero_point = torch.zeros_like(scale)
        else:  # unsigned symmetric: zero in the middle of the range
            scale = 2 * bound / (qmax - qmin)
            zero_point = torch.full_like(scale, float((qmin + qmax + 1) // 2))
    else:
        scale = (max_val - min_val) / (qmax - qmin)
        zero_point = None
    scale = torch.clamp(scale, min=eps)
    if power_of_two:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    if zero_point is None:
        zero_point = torch.clamp(torch.round(qmin - min_val / scale), qmin, qmax)
    return scale, zero_point.to(torch.int32)


def _broadcast(param: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-tensor (0-d) and full-shape parameters as they are; a vector along `axis`."""
    if param.dim() == 0 or param.dim() == like.dim():
        return param
    shape = [1] * like.dim()
    shape[axis] = -1
    return param.reshape(shape)


@torch.no_grad()
def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
    axis: int = 0,
) -> torch.Tensor:
    """Round-half-to-even then saturate, as ONNX QuantizeLinear does. Returns int32 values."""
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


@torch.no_grad()
def quantize_stochastic(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
    generator: torch.Generator | None = None, axis: int = 0,
) -> torch.Tensor:
    """Stochastic rounding: up with probability equal to the fraction (unbiased on average)."""
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return torch.clamp(torch.floor(x / s + noise) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 0
               ) -> torch.Tensor:
    s, z = _broadcast(scale, q, axis), _broadcast(zero_point, q, axis)
    return (q.to(torch.float32) - z.to(torch.float32)) * s


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
    axis: int = 0,
) -> torch.Tensor:
    """quantize then dequantize (float in, float out)."""
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis).to(x.dtype)
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


@torch.no_grad()
def weight_minmax(weight: torch.Tensor, granularity: Granularity, axis: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor or per-output-channel min and max of a weight tensor."""
    if granularity is Granularity.PER_TENSOR:
        return weight.min(), weight.max()
    flat = weight.transpose(0, axis).reshape(weight.shape[axis], -1)
    return flat.min(dim=1).values, flat.max(dim=1).values


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    reference, approx = reference.detach().float(), approx.detach().float()
    noise = (reference - approx).pow(2).mean()
    signal = reference.pow(2).mean()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def lsq_fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
    axis: int = 0, stochastic: bool = False,
) -> torch.Tensor:
    """Differentiable fake quantization for QAT (LSQ, Esser et al. 2020).

    Rounding passes gradients straight through inside the range (STE); the scale gets the LSQ
    gradient, damped by 1/sqrt(elements per scale * qmax) so it learns at the weights' pace.
    `stochastic` rounds up with probability equal to the fraction instead of to nearest.
    """
    per_scale = max(x.numel() // max(scale.numel(), 1), 1)
    damp = 1.0 / math.sqrt(per_scale * max(qmax, 1))
    s = scale * damp + (scale - scale * damp).detach()
    s = _broadcast(s, x, axis)
    z = _broadcast(zero_point, x, axis).to(x.dtype)
    v = torch.clamp(x / s + z, qmin, qmax)
    rounded = torch.floor(v + torch.rand_like(v)) if stochastic else torch.round(v)
    v = v + (rounded - v).detach()
    return (v - z) * s


def group_minmax(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each run of `group_size` values along dim 0 of a [K, N] weight."""
    k, n = weight.shape
    blocks = weight.reshape(k // group_size, group_size, n)
    return blocks.min(dim=1).values, blocks.max(dim=1).values
