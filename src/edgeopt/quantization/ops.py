"""Custom torch ops for quantized tensors, each mapped one-to-one onto an ONNX QDQ node.

The PyTorch model calls these ops and the exporter translates each into QuantizeLinear /
DequantizeLinear (onnx_hooks.py, loaded at the first export), so the simulated model and the
deployed graph compute the same thing.
"""

from __future__ import annotations

import torch

_RANGES = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int32: (-(2**31), 2**31 - 1),
}


def dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    return _RANGES[dtype]


@torch.library.custom_op("edgeopt::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
                        ) -> torch.Tensor:
    """Per-tensor fake quantization; the integer range is the zero point's dtype (as in ONNX)."""
    qmin, qmax = _RANGES[zero_point.dtype]
    z = zero_point.to(x.dtype)
    return (torch.clamp(torch.round(x / scale) + z, qmin, qmax) - z) * scale


@quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _qdq_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, scale, zero_point = inputs
    qmin, qmax = _RANGES[zero_point.dtype]
    q = torch.round(x / scale) + zero_point.to(x.dtype)
    ctx.save_for_backward((q >= qmin) & (q <= qmax))


def _qdq_backward(ctx, grad):  # type: ignore[no-untyped-def]
    # Straight-through estimator: pass the gradient where the value was not clipped.
    (inside,) = ctx.saved_tensors
    return grad * inside, None, None


quantize_dequantize.register_autograd(_qdq_backward, setup_context=_qdq_setup)


@torch.library.custom_op("edgeopt::dequantize", mutates_args=())
def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
               ) -> torch.Tensor:
    """Integer tensor (int8 weights, int32 bias) to float, per tensor or along `axis`."""
    if scale.dim() == 0:
        return (q.to(torch.float32) - zero_point.to(torch.float32)) * scale
    shape = [1] * q.dim()
    shape[axis] = -1
    zp = zero_point.to(torch.float32).reshape(shape)
    return (q.to(torch.float32) - zp) * scale.reshape(shape)


@dequantize.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


@torch.library.custom_op("edgeopt::dynamic_quantize_dequantize", mutates_args=())
def dynamic_quantize_dequantize(x: torch.Tensor) -> torch.Tensor:
    """uint8 per-tensor fake quantization with the range of this very tensor, computed exactly
    as ONNX DynamicQuantizeLinear computes it at run time."""
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-12)
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


@dynamic_quantize_dequantize.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("edgeopt::dequantize_blocked", mutates_args=())
def dequantize_blocked(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                       block_size: int) -> torch.Tensor:
    """Block-wise dequantization: each run of `block_size` values along `axis` shares a scale."""
    s = scale.repeat_interleave(block_size, dim=axis)
    z = zero_point.to(torch.float32).repeat_interleave(block_size, dim=axis)
    return (q.to(torch.float32) - z) * s


@dequantize_blocked.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
      block_size: int) -> torch.Tensor:
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)
