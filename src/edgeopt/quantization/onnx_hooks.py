"""What quantized models need from the ONNX exporter: a translation for each custom op and the
graph passes run on every exported file. edgeopt.export loads this module at the first export,
so applying and training quantization (a search trial) never imports onnx or onnxscript."""

from __future__ import annotations

import torch
from onnxscript import opset18 as op
from onnxscript import opset21 as op21

from edgeopt.export.onnx import register_translation
from edgeopt.quantization import (  # noqa: F401  (each registers its export pass)
    dynamic,  # defines torch.ops.edgeopt.dynamic_linear
    linear_fusion,  # static Linear + bias
    ops,  # defines the QDQ ops
    packing,  # int4
    pad_fusion,  # Pad into the convolution
)


def _quantize_dequantize_onnx(x, scale, zero_point):  # type: ignore[no-untyped-def]
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point), scale, zero_point)


def _dequantize_onnx(q, scale, zero_point, axis: int):  # type: ignore[no-untyped-def]
    return op.DequantizeLinear(q, scale, zero_point, axis=axis)


def _dynamic_onnx(x):  # type: ignore[no-untyped-def]
    q, scale, zero_point = op.DynamicQuantizeLinear(x)
    return op.DequantizeLinear(q, scale, zero_point)


def _dequantize_blocked_onnx(q, scale, zero_point, axis: int, block_size: int):  # type: ignore[no-untyped-def]
    return op21.DequantizeLinear(q, scale, zero_point, axis=axis, block_size=block_size)


def _dynamic_linear_onnx(x, weight_q, weight_scale, weight_zero_point, bias):  # type: ignore[no-untyped-def]
    q, scale, zero = op.DynamicQuantizeLinear(x)
    weight = op.Transpose(weight_q, perm=[1, 0])  # [in, out]; ORT folds the constant
    acc = op.MatMulInteger(q, weight, zero, weight_zero_point)
    y = op.Mul(op.Cast(acc, to=1), op.Mul(scale, weight_scale))
    return y if bias is None else op.Add(y, bias)


register_translation(torch.ops.edgeopt.quantize_dequantize.default, _quantize_dequantize_onnx)
register_translation(torch.ops.edgeopt.dequantize.default, _dequantize_onnx)
register_translation(torch.ops.edgeopt.dynamic_quantize_dequantize.default, _dynamic_onnx)
register_translation(torch.ops.edgeopt.dequantize_blocked.default, _dequantize_blocked_onnx)
register_translation(torch.ops.edgeopt.dynamic_linear.default, _dynamic_linear_onnx)
