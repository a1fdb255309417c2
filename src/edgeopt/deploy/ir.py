"""The integer IR shared by every MCU back end (C code, TFLite): int8 activations, NHWC, batch 1.

A graph is tensors (constants carry `data`) and ops in execution order. Quantization follows the TFLite
int8 spec: real = scale * (q - zero_point); activations int8 asymmetric per-tensor, weights int8
symmetric per-channel (axis = output channel), biases int32 with scale in_scale * w_scale, zero point 0.

Op kinds and their attrs (every attr present, explicit ints):
  conv2d, depthwise_conv2d   inputs [x, weight, bias]   stride (h,w), dilation (h,w),
                             padding (top,left,bottom,right), activation; depthwise also depth_multiplier
  fully_connected            inputs [x, weight, bias]   activation
  avg_pool2d, max_pool2d     inputs [x]                 kernel (h,w), stride (h,w), padding, activation
  mean                       inputs [x]                 global average over H and W (keeps dims: [1,1,1,C])
  add                        inputs [a, b]              activation
  concat                     inputs [...]               axis (NHWC axis of the output)
  reshape                    inputs [x]                 (target shape is the output tensor's shape)
  pad                        inputs [x]                 padding (top,left,bottom,right), pads with zero_point
Weight layouts: conv OHWI, depthwise 1HWC (C = in_channels * depth_multiplier), fully connected [out, in].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OP_KINDS = ("conv2d", "depthwise_conv2d", "fully_connected", "avg_pool2d", "max_pool2d", "mean", "add",
            "concat", "reshape", "pad")
ACTIVATIONS = ("none", "relu", "relu6")
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class QParams:
    """scale: float32 array of shape () or (C,); zero_point: int32, same shape; axis for per-channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    @staticmethod
    def of(scale: float | np.ndarray, zero_point: int | np.ndarray = 0, axis: int | None = None) -> QParams:
        return QParams(np.asarray(scale, np.float32), np.asarray(zero_point, np.int32), axis)


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # batch 1; 4-D activations are NHWC
    dtype: str  # "int8" | "int32" (biases) | "int4" (weights that fit 4 bits; data still one value per int8)
    qparams: QParams
    data: np.ndarray | None = None  # constants only

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_constant(self) -> bool:
        return self.data is not None


@dataclass
class Op:
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    name: str = ""  # the source node, for messages and per-layer reports


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]

    def producer(self, tensor: str) -> Op | None:
        return next((op for op in self.ops if tensor in op.outputs), None)

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]


def activation_range(activation: str, q: QParams) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized for int8: the clamp of a fused activation, in q's domain."""
    scale, zp = np.float32(q.scale), int(q.zero_point)

    def quantize(x: float) -> int:  # TfLiteRound on a float32 quotient: half away from zero
        v = np.float32(x) / scale
        return zp + int(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)))

    if activation == "none":
        return INT8_MIN, INT8_MAX
    if activation == "relu":
        return max(INT8_MIN, quantize(0.0)), INT8_MAX
    if activation == "relu6":
        return max(INT8_MIN, quantize(0.0)), min(INT8_MAX, quantize(6.0))
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}.")


def quantize_multiplier(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite QuantizeMultiplier: real = mult * 2^(shift - 31), mult an int32 in [2^30, 2^31) (0 for 0).

    Returns (multiplier int32, shift int32) with the shape of `real`; shift > 0 is a left shift.
    """
    real = np.asarray(real, np.float64)
    frac, shift = np.frexp(real)
    mult = np.sign(frac) * np.floor(np.abs(frac) * (1 << 31) + 0.5)  # std::round
    carry = np.abs(mult) == (1 << 31)
    mult = np.where(carry, mult / 2, mult)
    shift = np.where(carry, shift + 1, shift)
    tiny = shift < -31
    mult = np.where(tiny | (real == 0), 0, mult)
    shift = np.where(tiny | (real == 0), 0, shift)
    return mult.astype(np.int32), shift.astype(np.int32)
