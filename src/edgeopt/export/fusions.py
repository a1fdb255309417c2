"""ONNX translations of two transformer ops, written so that ONNX Runtime optimizes them.

The exporter's default translations compute the right values but cost time in ONNX Runtime:

- exact (erf) GELU: its operand order (0.5 * (1 + erf) first, then * x) is not a pattern ORT's
  Gelu fusion knows, so five element-wise passes run over every feed-forward activation. Here it
  is x * (1 + erf(x / sqrt 2)) * 0.5, which ORT fuses into one Gelu (BiasGelu with the bias).
- scaled_dot_product_attention with a boolean mask: the default turns the mask into 0 / the
  dtype's minimum, adds it to the scores, and after the softmax replaces NaN by 0 with IsNaN ->
  Where over every attention matrix. With a finite minimum the softmax cannot make a NaN (a row
  masked entirely gets the same uniform weights either way), so that pass only costs time: about
  1 ms per layer of MiniLM at 128 tokens, 8 % of the fp32 model. Here the mask is converted the
  same way and the default float-mask translation does the rest.

Both give the values of the default translations (the GELU to float rounding).
"""

from __future__ import annotations

import torch
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops import nn as torchlib_nn

from edgeopt.export.onnx import register_translation

_SQRT2 = 1.4142135623730951


def _gelu_onnx(x, approximate: str = "none"):  # type: ignore[no-untyped-def]
    if approximate != "none":
        return torchlib_nn.aten_gelu(x, approximate=approximate)
    erf = op.Erf(op.Div(x, ir.tensor(_SQRT2, dtype=x.dtype)))
    inner = op.Mul(x, op.Add(erf, ir.tensor(1.0, dtype=x.dtype)))
    return op.Mul(inner, ir.tensor(0.5, dtype=x.dtype))


def _sdpa_onnx(query, key, value, attn_mask=None, dropout_p: float = 0.0,  # type: ignore[no-untyped-def]
               is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False):
    if attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL:
        zero = op.Constant(value=ir.tensor(0.0, dtype=query.dtype))
        lowest = op.Constant(value=ir.tensor(query.dtype.min, dtype=query.dtype))
        attn_mask = op.Where(attn_mask, zero, lowest)
    return torchlib_nn.aten_scaled_dot_product_attention(
        query, key, value, attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        enable_gqa=enable_gqa)


register_translation(torch.ops.aten.gelu.default, _gelu_onnx)
register_translation(torch.ops.aten.scaled_dot_product_attention.default, _sdpa_onnx)
