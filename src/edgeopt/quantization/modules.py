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
from edgeopt.quantization.primitives import (
    bias_safe_weight_scale,
    choose_qparams,
    group_minmax,
    integer_accumulate,
    lsq_fake_quantize,
    qlinear_add,
    quantize,
    requant_multiplier,
    requantize,
    spec_range,
    weight_minmax,
)


def _zero_point_dtype(qmin: int, qmax: int) -> torch.dtype:
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    raise ValueError(f"integer range [{qmin}, {qmax}] does not fit 8 bits")


def log_of_scale(scale: torch.Tensor) -> torch.Tensor:
    """A quantization scale as QAT learns it: its logarithm. Adam moves a parameter by about lr a
    step whatever its size, so a raw weight scale of ~1e-3 trained at lr 1e-3 doubled, vanished
    or flipped within an epoch (a factorized ResNet-8 fell from 95.6 % to chance); in the log
    domain a step changes the scale by a factor near exp(lr) (TQT, Jain et al. 2020, trains log2
    thresholds for the same reason), and it cannot cross zero."""
    return scale.clamp(min=1e-12).log()


class ActQuant(nn.Module):
    """Observes a tensor during calibration, then fake-quantizes it with frozen parameters."""

    def __init__(self, spec: QuantSpec, observer: Observer) -> None:
        super().__init__()
        self.spec = spec
        self.observer: Observer | None = observer
        self.calls = 0
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.uint8))
        self.learned_log_scale: nn.Parameter | None = None  # QAT (log_of_scale)
        self.calibration_stats: dict[str, float] = {}

    @property
    def frozen(self) -> bool:
        return self.observer is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            self.calls += 1
            return x
        if self.learned_log_scale is not None and self.training:
            qmin, qmax = ops.dtype_range(self.zero_point.dtype)
            return lsq_fake_quantize(x, self.learned_log_scale.exp(), self.zero_point.float(),
                                     qmin, qmax)
        return ops.quantize_dequantize(x, self.scale, self.zero_point)

    def qparams(self) -> tuple[float, int, int, int]:
        """Frozen scale, zero point and integer range."""
        qmin, qmax = ops.dtype_range(self.zero_point.dtype)
        return float(self.scale), int(self.zero_point), qmin, qmax

    def start_learning(self) -> None:
        """QAT: the frozen scale becomes a trainable parameter (LSQ, in the log domain)."""
        self.learned_log_scale = nn.Parameter(log_of_scale(self.scale.detach()))

    @torch.no_grad()
    def stop_learning(self) -> None:
        if self.learned_log_scale is not None:
            self.scale = self.learned_log_scale.detach().exp().clone()
            self.learned_log_scale = None

    @torch.no_grad()
    def freeze(self) -> None:
        """Turn the observed range into a scale and zero point and start quantizing."""
        if self.observer is None:
            return
        low, high = self.observer.range()
        self.calibration_stats = _clipping(self.observer, float(low), float(high))
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


def _clipping(observer: Observer, low: float, high: float) -> dict[str, float]:
    """The share of calibration values outside the chosen range (clipped, i.e. saturated)."""
    hist = getattr(observer, "hist", None)
    if hist is None or hist.sum() == 0:
        return {"clip_ratio": 0.0, "range_min": low, "range_max": high}
    edges = observer.edges()  # type: ignore[attr-defined]
    centers = (edges[:-1] + edges[1:]) / 2
    outside = hist[(centers < low) | (centers > high)].sum()
    return {"clip_ratio": float(outside / hist.sum()), "range_min": low, "range_max": high}


def runs_exactly(x: Any) -> bool:
    """Whether a fused integer kernel may be computed exactly here: on a real tensor that needs
    no gradient (tracing and export see the plain float ops the runtime fuses; training passes
    gradients through the float ops)."""
    return (isinstance(x, torch.Tensor) and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


@dataclasses.dataclass(frozen=True)
class FusedKernel:
    """The quantizers ONNX Runtime folds into a fused integer kernel: the one whose grid the
    input is on and the one that quantizes the result (after a ReLU it makes redundant)."""

    input: ActQuant
    output: ActQuant


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

    export_tolerance = 0.05  # integer kernels may round an accumulator the other way

    def __init__(self, layer: nn.Module, spec: QuantSpec, scale: torch.Tensor | None = None
                 ) -> None:
        super().__init__()
        kind = WEIGHT_LAYERS[type(layer)]
        self.float_type = type(layer).__name__
        self._functional = kind.functional
        self._hyperparameters = kind.hyperparameters(layer)
        self.spec = spec
        weight = layer.weight.detach()
        qmin, qmax = spec_range(spec, is_weight=True)
        low, high = weight_minmax(weight, spec.granularity)
        chosen, zero_point = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric,
                                            power_of_two=spec.power_of_two_scale)
        if scale is None:
            scale = chosen
        else:  # a learned (QAT) scale: symmetric, zero point 0
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        self.register_buffer("weight_q", quantize(weight, scale, zero_point, qmin, qmax)
                             .to(_zero_point_dtype(qmin, qmax)))
        self.reference_weight = weight  # read (and dropped) by the statistics
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point.to(self.weight_q.dtype))
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias_float", bias)
        self.register_buffer("bias_q", None)
        self.register_buffer("bias_scale", None)
        self.register_buffer("bias_zero_point", None)
        self.input_quantizer: nn.Module | None = None  # set for dynamic quantization
        self.fused: FusedKernel | None = None  # set once the runtime's kernel is known

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
    def quantize_bias(self, input_scale: torch.Tensor) -> int:
        """Store the bias as int32 in the accumulator's scale (input scale x weight scale).

        Channels whose bias would not fit in int32 beside the accumulator get a wider weight
        scale first (see `bias_safe_weight_scale`); returns how many were widened.
        """
        if self.bias_float is None:
            return 0
        widened = self._widen_weight_scale(bias_safe_weight_scale(
            self.bias_float, input_scale, self.weight_scale, self.weight_q[0].numel()))
        scale = (input_scale * self.weight_scale).reshape(-1).expand_as(self.bias_float).clone()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        qmin, qmax = ops.dtype_range(torch.int32)
        self.bias_q = quantize(self.bias_float, scale, zero, qmin, qmax)
        self.bias_scale, self.bias_zero_point = scale, zero
        self.bias_float = None
        return widened

    @torch.no_grad()
    def _widen_weight_scale(self, scale: torch.Tensor) -> int:
        """Re-store the integer weights on a (per channel) wider scale; count changed scales."""
        changed = int((scale > self.weight_scale).sum())
        if changed:
            qmin, qmax = spec_range(self.spec, is_weight=True)
            weight = self.weight()
            self.weight_q = quantize(weight, scale, self.weight_zero_point.to(torch.int32),
                                     qmin, qmax).to(self.weight_q.dtype)
            self.weight_scale = scale.to(self.weight_scale.dtype).clone()
        return changed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            # dynamic quantization: the runtime's integer GEMM cannot take a float bias
            y = self._functional(self.input_quantizer(x), self.weight(), None,
                                 **self._hyperparameters)
            return y + self.bias_float if self.bias_float is not None else y
        if self.fused is not None and self.bias_float is None and runs_exactly(x) and (
                x.dim() == 2 or self.float_type != "Linear"):  # Linear on 3-D is MatMul + Add
            return self._fused_forward(x, self.fused)
        return self._functional(x, self.weight(), self.bias(), **self._hyperparameters)

    def _fused_forward(self, x: torch.Tensor, fused: FusedKernel) -> torch.Tensor:
        """QLinearConv / QGemm exactly: the integer accumulator, requantized to the output grid
        (returned dequantized, so the output quantizer and a ReLU before it change nothing)."""
        in_scale, in_zero, _, _ = fused.input.qparams()
        out_scale, out_zero, qmin, qmax = fused.output.qparams()
        codes = torch.round(x / fused.input.scale)  # the input minus its zero point, exactly
        shape = (-1,) + (1,) * (self.weight_q.dim() - 1)
        zero = self.weight_zero_point.float().reshape(shape) if self.weight_zero_point.dim() \
            else self.weight_zero_point.float()
        acc = integer_accumulate(self._functional, codes, self.weight_q.float() - zero,
                                 self.bias_q, self._hyperparameters)
        multiplier = requant_multiplier(fused.input.scale, self.weight_scale, fused.output.scale)
        return requantize(acc, multiplier, out_zero, qmin, qmax) * fused.output.scale

    def stored_parameters(self) -> list[torch.Tensor]:
        """The weights as stored (integers), for size and parameter counts."""
        return [t for t in (self.weight_q, self.bias_q, self.bias_float) if t is not None]

    def integer_grid(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Scale and zero point broadcast to the weight's shape, and the integer range."""
        return _grid(self.weight_q, self.weight_scale, self.weight_zero_point, self.spec)

    @torch.no_grad()
    def set_integer_weight(self, q: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Store new integer weights (AdaRound, GPTQ, log2); a new scale means zero point 0."""
        if scale is not None:
            self.weight_scale = scale.float().clone()
            self.weight_zero_point = torch.zeros_like(scale, dtype=self.weight_q.dtype)
        self.weight_q = q.round().to(self.weight_q.dtype)

    def set_float_bias(self, bias: torch.Tensor) -> None:
        """Replace the float bias (bias correction); it is stored as int32 later."""
        if self.bias_q is not None:
            raise RuntimeError("the bias is already stored as integers")
        self.bias_float = bias.detach().float().clone()

    def extra_repr(self) -> str:
        return f"{self.float_type}, weight={tuple(self.weight_q.shape)} {self.weight_q.dtype}"


@register_macs(QuantizedWeightLayer)
def _quantized_layer_macs(layer: QuantizedWeightLayer, inputs: tuple, output: torch.Tensor) -> int:
    # every output element needs one multiply-add per weight of its output channel
    return output.numel() * layer.weight_q[0].numel()


class ChannelClamp(nn.Module):
    """ReLU6 after cross-layer equalization: clamp(x, 0, upper[c]) per channel, so scaling a
    channel by 1/s keeps the function exact (the clip at 6 becomes 6/s)."""

    def __init__(self, upper: torch.Tensor, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.register_buffer("upper", upper.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return torch.minimum(torch.relu(x), self.upper.reshape(shape))


class ChannelScale(nn.Module):
    """x * factor[c] along the last dimension (SmoothQuant's division of the activations, where
    it cannot be folded into a preceding LayerNorm); exported as one Mul."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class QuantizedAdd(nn.Module):
    """A residual add that ONNX Runtime runs as QLinearAdd, computed as that kernel computes it;
    while tracing or exporting it is a plain add (the Add between DQ and Q the runtime fuses)."""

    def __init__(self, a: ActQuant, b: ActQuant, output: ActQuant) -> None:
        super().__init__()
        self.quantizers = (a, b, output)  # a tuple: not submodules, they live in the graph

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not (runs_exactly(a) and runs_exactly(b) and a.shape == b.shape):
            return a + b
        qa, qb, out = self.quantizers
        (sa, za, _, _), (sb, zb, _, _) = qa.qparams(), qb.qparams()
        sc, zc, qmin, qmax = out.qparams()
        codes = qlinear_add(torch.round(a / qa.scale) + za, torch.round(b / qb.scale) + zb,
                            (sa, za), (sb, zb), (sc, zc), qmin, qmax)
        return (codes - zc) * out.scale


class DynamicActQuant(nn.Module):
    """Quantizes each batch with its own range at run time (ONNX DynamicQuantizeLinear)."""

    export_tolerance = 0.05

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dynamic_quantize_dequantize(x)


class GroupedLinear(nn.Module):
    """A Linear with low-bit weights quantized in groups along the input dimension.

    Stored transposed ([in, out]) so the exported DequantizeLinear(block_size) -> MatMul pair is
    what ONNX Runtime fuses into MatMulNBits for 4-bit weights.
    """

    min_opset = 21  # block-wise DequantizeLinear
    export_tolerance = 0.05

    def __init__(self, layer: nn.Linear, spec: QuantSpec) -> None:
        super().__init__()
        assert spec.group_size is not None
        self.float_type = "Linear"
        self.spec = spec
        self.group_size = spec.group_size
        weight = layer.weight.detach().t().contiguous()  # [in, out]
        qmin, qmax = spec_range(spec, is_weight=True)
        low, high = group_minmax(weight, spec.group_size)
        scale, zero_point = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric)
        expanded = scale.repeat_interleave(spec.group_size, 0)
        zeros = zero_point.repeat_interleave(spec.group_size, 0)
        self.register_buffer("weight_q", quantize(weight, expanded, zeros, qmin, qmax)
                             .to(_zero_point_dtype(qmin, qmax)))
        self.reference_weight = weight
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point.to(self.weight_q.dtype))
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        return ops.dequantize_blocked(self.weight_q, self.weight_scale, self.weight_zero_point, 0,
                                      self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight())
        return y + self.bias if self.bias is not None else y

    def stored_parameters(self) -> list[torch.Tensor]:
        return [t for t in (self.weight_q, self.bias) if t is not None]

    def integer_grid(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        scale = self.weight_scale.repeat_interleave(self.group_size, 0)
        zero = self.weight_zero_point.repeat_interleave(self.group_size, 0)
        return _grid(self.weight_q, scale, zero, self.spec)

    @torch.no_grad()
    def set_integer_weight(self, q: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        if scale is not None:
            raise ValueError("GroupedLinear keeps its group scales")
        self.weight_q = q.round().to(self.weight_q.dtype)

    def set_float_bias(self, bias: torch.Tensor) -> None:
        self.bias = bias.detach().float().clone()

    def extra_repr(self) -> str:
        return (f"in={self.weight_q.shape[0]}, out={self.weight_q.shape[1]}, "
                f"bits={self.spec.bits}, group_size={self.group_size}")


class QATWeightLayer(nn.Module):
    """Trainable float weights, fake-quantized in every forward pass with a learned scale.

    Weights that are exactly zero when QAT starts (a pruned model) stay zero: a fixed mask.
    """

    def __init__(self, layer: nn.Module, spec: QuantSpec, stochastic: bool = False) -> None:
        super().__init__()
        kind = WEIGHT_LAYERS[type(layer)]
        self.float_layer_type = type(layer)
        self._functional = kind.functional
        self._hyperparameters = kind.hyperparameters(layer)
        self.spec = spec
        self.qmin, self.qmax = spec_range(spec, is_weight=True)
        weight = layer.weight.detach().clone()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        self.register_buffer("mask", (weight != 0).to(weight.dtype))
        low, high = weight_minmax(weight, spec.granularity)
        scale, _ = choose_qparams(low, high, self.qmin, self.qmax, symmetric=True)
        self.log_scale = nn.Parameter(log_of_scale(scale))
        self.stochastic = stochastic  # stochastic rounding while training; nearest when frozen

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def fake_weight(self) -> torch.Tensor:
        scale = self.scale
        return lsq_fake_quantize(self.weight * self.mask, scale, torch.zeros_like(scale),
                                 self.qmin, self.qmax, stochastic=self.stochastic and self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._functional(x, self.fake_weight(), self.bias, **self._hyperparameters)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeightLayer:
        """The deployable layer: the trained weights stored as integers with the learned scale."""
        layer = _empty_float_layer(self.float_layer_type, self.weight * self.mask, self.bias,
                                   self._hyperparameters)
        return QuantizedWeightLayer(layer, self.spec, scale=self.scale.detach())


def _grid(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec
          ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    shape = (-1,) + (1,) * (q.dim() - 1)
    if scale.dim() == 0:
        full_scale, full_zero = scale.expand(q.shape), zero.expand(q.shape)
    elif scale.shape == q.shape:
        full_scale, full_zero = scale, zero
    else:
        full_scale = scale.reshape(shape).expand(q.shape)
        full_zero = zero.reshape(shape).expand(q.shape)
    qmin, qmax = spec_range(spec, is_weight=True)
    return full_scale.float().contiguous(), full_zero.float().contiguous(), qmin, qmax


def _empty_float_layer(kind: type[nn.Module], weight: torch.Tensor, bias: torch.Tensor | None,
                       hyperparameters: dict[str, Any]) -> nn.Module:
    """A float Linear/Conv holding `weight` (masked) and `bias`, to re-quantize after QAT."""
    if kind is nn.Linear:
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        groups = hyperparameters["groups"]
        layer = kind(weight.shape[1] * groups, weight.shape[0], weight.shape[2:], bias=bias is not None,
                     **hyperparameters)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer
