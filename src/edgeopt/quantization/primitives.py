"""Pure quantization math: integer ranges, scale/zero-point choice, (fake) quantization."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


def int32_bias_bound(fan_in: int, input_levels: int = 255, weight_levels: int = 128) -> int:
    """The largest |int32 bias| an integer kernel can add to its accumulator without overflow.

    The accumulator sums `fan_in` products of (input - zero point) and a weight, each at most
    `input_levels * weight_levels` in magnitude; the bias must leave room for all of them.
    """
    return 2**31 - 1 - fan_in * input_levels * weight_levels


@torch.no_grad()
def bias_safe_weight_scale(bias: torch.Tensor, input_scale: torch.Tensor,
                           weight_scale: torch.Tensor, fan_in: int) -> torch.Tensor:
    """The weight scale, widened where the int32 bias (in units of input_scale x weight_scale)
    would not fit beside the accumulator.

    Trained networks have channels whose weights are ~0 (batch norm with gamma ~ 0) and whose
    output is their bias: with the tiny scale their weights give, the bias saturates int32 and
    the runtime's accumulator wraps around. The wider scale rounds those ~0 weights to 0 and
    keeps the bias exact. Per-tensor scales (0-d) widen as a whole. The target is half the
    bound: float32 rounds the quantized bias by up to 2**7 near 2**31.
    """
    target = int32_bias_bound(fan_in) / 2
    needed = bias.detach().abs().float() / (input_scale.float() * target)
    if weight_scale.dim() == 0:
        needed = needed.max()
    else:
        needed = needed.reshape(weight_scale.shape)
    return torch.maximum(weight_scale, needed)


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


# --- the runtime's fused integer kernels, computed exactly -------------------------------------
# ONNX Runtime fuses DQ -> Conv/Gemm -> Q into QLinearConv/QGemm and DQ -> Add -> Q into
# QLinearAdd. Their arithmetic differs from "float op, then QuantizeLinear" by rounding ties
# only, but through a deep network rare flips compound. These functions compute what the x86
# kernels compute, bit for bit (tests check them against ONNX Runtime itself).

_F32_EXACT = 2**24  # every integer below this magnitude is exact in float32


@torch.no_grad()
def integer_accumulate(functional: Callable[..., torch.Tensor], x: torch.Tensor,
                       weight: torch.Tensor, bias: torch.Tensor | None,
                       hyperparameters: dict[str, Any]) -> torch.Tensor:
    """The int32 accumulator of a conv/linear on integer-valued inputs, exactly (float64).

    float32 is used while no partial sum can reach 2**24 (it is exact there and faster).
    """
    bound = weight[0].numel() * float(x.abs().max()) * float(weight.abs().max())
    dtype = torch.float32 if bound < _F32_EXACT else torch.float64
    acc = functional(x.to(dtype), weight.to(dtype), None, **hyperparameters).double()
    if bias is None:
        return acc
    shape = [1, -1] + [1] * (acc.dim() - 2)
    return acc + bias.double().reshape(shape)


def requant_multiplier(input_scale: torch.Tensor, weight_scale: torch.Tensor,
                       output_scale: torch.Tensor) -> torch.Tensor:
    """input_scale * weight_scale / output_scale in float32, operation by operation, as the
    runtime computes it for QLinearConv / QGemm."""
    return (input_scale.float() * weight_scale.float()) / output_scale.float()


@torch.no_grad()
def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: int, qmin: int,
               qmax: int) -> torch.Tensor:
    """float32(acc) * multiplier per output channel (dim 1), rounded half to even and saturated;
    returns the integer minus the zero point (as float)."""
    shape = [1, -1] + [1] * (acc.dim() - 2) if multiplier.dim() else []
    value = acc.float() * multiplier.reshape(shape)
    return torch.clamp(torch.round(value), qmin - zero_point, qmax - zero_point)


@torch.no_grad()
def qlinear_add(a: torch.Tensor, b: torch.Tensor, a_qparams: tuple[float, int],
                b_qparams: tuple[float, int], out_qparams: tuple[float, int], qmin: int,
                qmax: int) -> torch.Tensor:
    """ONNX Runtime's QLinearAdd on x86 (AVX2 and up) for integer codes `a`, `b` (as float):
    fma(a, sa/sc, fma(b, sb/sc, zc - (sa/sc*za + sb/sc*zb))), rounded half to even, saturated.
    Returns the output codes. float64 holds each fused multiply-add exactly before its one
    float32 rounding."""
    (sa, za), (sb, zb), (sc, zc) = a_qparams, b_qparams, out_qparams
    f32 = torch.float32
    ra = (torch.tensor(sa, dtype=f32) / torch.tensor(sc, dtype=f32)).double()
    rb = (torch.tensor(sb, dtype=f32) / torch.tensor(sc, dtype=f32)).double()
    rb_zb = (rb * zb).float().double()
    fixed = (torch.tensor(float(zc), dtype=f32) - (ra * za + rb_zb).float()).double()
    t = (b.double() * rb + fixed).float()
    t = (a.double() * ra + t.double()).float()
    return torch.clamp(torch.round(t), qmin, qmax)
