"""Dynamic int8 Linear layers: int8 weights, activations quantized at run time.

The whole layer is one custom op, so the exporter writes it in the form ONNX Runtime fuses best:
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add becomes one DynamicQuantizeMatMul
that also adds the bias (a Q/DQ export leaves the bias Add as a separate pass over the output).
The activations get one uint8 range per call, computed as ONNX DynamicQuantizeLinear does; the
PyTorch side computes the same integers.

(Measured and left out: one symmetric scale per token instead. On MiniLM it lifts the embedding
cosine from 0.994 to 0.998 without calibration data, but ONNX Runtime has no kernel for it and
the extra passes made the model 12-20 % slower; SmoothQuant with calibration data reaches the
same accuracy at per-tensor speed, see smoothing.py.)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeopt.quantization.config import QuantSpec
from edgeopt.quantization.modules import QuantizedWeightLayer

_EPS = 1e-12


@torch.library.custom_op("edgeopt::dynamic_linear", mutates_args=())
def dynamic_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                   weight_zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x W^T + b with W stored as integers and x quantized to uint8 at run time."""
    zero_w = weight_zero_point.to(torch.float32)
    weight = weight_q.to(torch.float32) - (zero_w.reshape(-1, 1) if zero_w.dim() else zero_w)
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=_EPS)
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero
    y = F.linear(q, weight) * (scale * weight_scale)
    return y + bias if bias is not None else y


@dynamic_linear.register_fake
def _(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
      weight_zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight_q.shape[0]))


class DynamicLinear(QuantizedWeightLayer):
    """A Linear with int8 weights whose input is quantized per call at run time."""

    export_tolerance = 0.05  # integer kernels may round an accumulator the other way

    def __init__(self, layer: nn.Linear, spec: QuantSpec) -> None:
        super().__init__(layer, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dynamic_linear(x, self.weight_q, self.weight_scale, self.weight_zero_point,
                              self.bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, inputs quantized at run time"
