"""edgeopt's integer reference: numpy int8 kernels with TFLite's int8 rounding rules.

Requantization is TFLite's MultiplyByQuantizedMultiplier (SaturatingRoundingDoublingHighMul, then
RoundingDivideByPOT: double rounding, the default build), ADD rescales both inputs after a left shift of
20, MEAN folds 1/count into the multiplier, AVERAGE_POOL rounds half away from zero. With `pow2=True`
(every requantization scale a power of two, QuantSpec(power_of_two_scale=True)) conv, depthwise, fully
connected and add requantize with one rounding shift, no multiplier. The generated C is bit-exact with this.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeopt.deploy.ir import Graph, Op, QParams, Tensor, activation_range, quantize_multiplier
from edgeopt.errors import ExportError

ADD_LEFT_SHIFT = 20
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero (arithmetic shifts)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (held in int64)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    high = np.sign(total) * (np.abs(total) >> 31)  # C division truncates toward zero
    return np.where((a == I32_MIN) & (b == I32_MIN), I32_MAX, high)


def multiply_by_quantized_multiplier(x: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    wrapped = ((np.asarray(x, np.int64) << left) + 2**31) % 2**32 - 2**31  # int32 arithmetic
    return rounding_divide_by_pot(doubling_high_mul(wrapped, mult), right)


def pow2_exponent(real: np.ndarray, what: str) -> np.ndarray:
    """log2 of scales that must be exact powers of two (the shift-only mode)."""
    real = np.asarray(real, np.float64)
    frac, exp = np.frexp(real)
    if not np.all(frac == 0.5):
        raise ExportError(f"power-of-two mode: {what} has a requantization scale that is not a power of two "
                          f"(e.g. {real.reshape(-1)[np.argmax(frac != 0.5)]:.6g}); quantize with "
                          "QuantSpec(power_of_two_scale=True) for weights and activations, or use pow2=False.")
    return (exp - 1).astype(np.int64)


def shift_round(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """x * 2^exponent, rounding half away from zero when exponent < 0 (the pow2 requantization)."""
    exponent = np.asarray(exponent, np.int64)
    x = np.asarray(x, np.int64)
    return np.where(exponent >= 0, x << np.maximum(exponent, 0), rounding_divide_by_pot(x, np.maximum(-exponent, 0)))


def requantize_params(graph: Graph, op: Op) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) per output channel of a conv / depthwise / fully connected op."""
    x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
    out = graph.tensors[op.outputs[0]]
    real = np.float64(x.qparams.scale) * w.qparams.scale.astype(np.float64) / np.float64(out.qparams.scale)
    return quantize_multiplier(real)


def _requantize(graph: Graph, op: Op, acc: np.ndarray, pow2: bool) -> np.ndarray:
    x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
    out = graph.tensors[op.outputs[0]]
    if pow2:
        real = np.float64(x.qparams.scale) * w.qparams.scale.astype(np.float64) / np.float64(out.qparams.scale)
        acc = shift_round(acc, pow2_exponent(real, op.name or op.outputs[0]))
    else:
        mult, shift = requantize_params(graph, op)
        acc = multiply_by_quantized_multiplier(acc, mult, shift)
    return _clamp(acc + int(out.qparams.zero_point), op, out.qparams)


def _clamp(values: np.ndarray, op: Op, q: QParams) -> np.ndarray:
    lo, hi = activation_range(op.attrs.get("activation", "none"), q)
    return np.clip(values, lo, hi).astype(np.int8)


def _patches(x: np.ndarray, op: Op, kernel: tuple[int, int], fill: int) -> np.ndarray:
    """Input windows [OH, OW, KH, KW, C] of an NHWC tensor (batch dropped), padding filled with `fill`."""
    top, left, bottom, right = op.attrs["padding"]
    sh, sw = op.attrs["stride"]
    dh, dw = op.attrs.get("dilation", (1, 1))
    padded = np.pad(x[0].astype(np.int64), ((top, bottom), (left, right), (0, 0)), constant_values=fill)
    kh, kw = kernel
    oh = (padded.shape[0] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[1] - dw * (kw - 1) - 1) // sw + 1
    rows = (np.arange(oh) * sh)[:, None] + np.arange(kh) * dh  # [OH, KH]
    cols = (np.arange(ow) * sw)[:, None] + np.arange(kw) * dw  # [OW, KW]
    return padded[rows[:, None, :, None], cols[None, :, None, :]]  # [OH, OW, KH, KW, C]


def _conv(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    x, w, b = args
    zp = int(graph.tensors[op.inputs[0]].qparams.zero_point)
    patches = _patches(x, op, w.shape[1:3], zp) - zp  # padding contributes (zp - zp) = 0, as TFLite skips it
    acc = _exact_dot(patches.reshape(*patches.shape[:2], -1), w.reshape(w.shape[0], -1).T) + b
    return _requantize(graph, op, acc, pow2)[None]


def _exact_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matrix product through float64 BLAS: exact while every partial sum stays below 2^53."""
    return np.rint(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)


def _depthwise(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    x, w, b = args
    zp = int(graph.tensors[op.inputs[0]].qparams.zero_point)
    patches = _patches(x, op, w.shape[1:3], zp) - zp
    patches = np.repeat(patches, op.attrs.get("depth_multiplier", 1), axis=-1)  # out c = in c * m + j
    acc = np.einsum("yxhwc,hwc->yxc", patches, w[0].astype(np.int64)) + b
    return _requantize(graph, op, acc, pow2)[None]


def _fully_connected(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    x, w, b = args
    zp = int(graph.tensors[op.inputs[0]].qparams.zero_point)
    acc = _exact_dot(w, x.reshape(-1).astype(np.int64) - zp) + b
    return _requantize(graph, op, acc, pow2)[None]


def _pool(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    x = args[0]
    q = graph.tensors[op.outputs[0]].qparams
    if op.kind == "max_pool2d":
        return _clamp(_patches(x, op, op.attrs["kernel"], -(2**40)).max(axis=(2, 3)), op, q)[None]
    windows = _patches(x, op, op.attrs["kernel"], 0)
    valid = _patches(np.ones_like(x), op, op.attrs["kernel"], 0)
    total, count = windows.sum(axis=(2, 3)), valid.sum(axis=(2, 3))
    average = np.where(total > 0, total + count // 2, total - count // 2)
    return _clamp(np.sign(average) * (np.abs(average) // count), op, q)[None]


def mean_params(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """TFLite Micro's MEAN multiplier with 1/count folded in: (multiplier, shift)."""
    mult, shift = (int(v) for v in quantize_multiplier(np.float64(np.float32(in_scale)) / np.float64(out_scale)))
    pre = min(count.bit_length() - 1, 32, 31 + shift)
    return int((mult << pre) // count), shift - pre


def _mean(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    x = args[0].astype(np.int64)
    xq, q = graph.tensors[op.inputs[0]].qparams, graph.tensors[op.outputs[0]].qparams
    count = x.shape[1] * x.shape[2]
    mult, shift = mean_params(float(xq.scale), float(q.scale), count)
    total = x.sum(axis=(1, 2), keepdims=True) - int(xq.zero_point) * count
    out = multiply_by_quantized_multiplier(total, mult, shift) + int(q.zero_point)
    return np.clip(out, -128, 127).astype(np.int8)


def add_params(s1: float, s2: float, out: float) -> list[tuple[int, int]]:
    """TFLite ADD: [(mult1, shift1), (mult2, shift2), (mult_out, shift_out)] with left shift 20."""
    twice_max = 2 * max(np.float64(s1), np.float64(s2))
    reals = [np.float64(s1) / twice_max, np.float64(s2) / twice_max,
             twice_max / ((1 << ADD_LEFT_SHIFT) * np.float64(out))]
    return [tuple(int(v) for v in quantize_multiplier(r)) for r in reals]


def add_pow2_shifts(s1: float, s2: float, out: float) -> tuple[int, int, int]:
    """Shift-only ADD: inputs shifted left to the finer input grid, the sum shifted to the output grid."""
    e1, e2, eo = (int(pow2_exponent(s, "add")) for s in (s1, s2, out))
    low = min(e1, e2)
    return e1 - low, e2 - low, low - eo


def _add(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    (a, b), (qa, qb) = args, (graph.tensors[n].qparams for n in op.inputs)
    q = graph.tensors[op.outputs[0]].qparams
    da = a.astype(np.int64) - int(qa.zero_point)
    db = b.astype(np.int64) - int(qb.zero_point)
    if pow2:
        la, lb, lo = add_pow2_shifts(float(qa.scale), float(qb.scale), float(q.scale))
        total = shift_round((da << la) + (db << lb), lo)
    else:
        (m1, s1), (m2, s2), (mo, so) = add_params(float(qa.scale), float(qb.scale), float(q.scale))
        sa = rounding_divide_by_pot(doubling_high_mul(da << ADD_LEFT_SHIFT, m1), -s1)
        sb = rounding_divide_by_pot(doubling_high_mul(db << ADD_LEFT_SHIFT, m2), -s2)
        total = rounding_divide_by_pot(doubling_high_mul(sa + sb, mo), -so)
    return _clamp(total + int(q.zero_point), op, q)


def _concat(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    for name in op.inputs:
        check_same_qparams(graph, name, op)
    return np.concatenate(args, axis=op.attrs["axis"])


def _reshape(graph: Graph, op: Op, args: list[np.ndarray], pow2: bool) -> np.ndarray:
    check_same_qparams(graph, op.inputs[0], op)
    return args[0].reshape(graph.tensors[op.outputs[0]].shape)


def check_same_qparams(graph: Graph, name: str, op: Op) -> None:
    a, b = graph.tensors[name].qparams, graph.tensors[op.outputs[0]].qparams
    if float(a.scale) != float(b.scale) or int(a.zero_point) != int(b.zero_point):
        raise ExportError(f"{op.kind} {op.name!r}: input {name!r} and output are quantized differently; "
                          "the integer back end needs them equal for this op.")


KERNELS: dict[str, Callable[[Graph, Op, list[np.ndarray], bool], np.ndarray]] = {
    "conv2d": _conv, "depthwise_conv2d": _depthwise, "fully_connected": _fully_connected,
    "avg_pool2d": _pool, "max_pool2d": _pool, "mean": _mean, "add": _add, "concat": _concat,
    "reshape": _reshape,
}


def run(graph: Graph, x: np.ndarray, *, pow2: bool = False) -> list[np.ndarray]:
    """Run the graph on one int8 input (the input tensor's shape); returns the int8 outputs."""
    values: dict[str, np.ndarray] = {graph.inputs[0]: np.asarray(x, np.int8).reshape(graph.tensors[graph.inputs[0]].shape)}
    for op in graph.ops:
        kernel = KERNELS.get(op.kind)
        if kernel is None:
            raise ExportError(f"the integer reference has no kernel for op {op.kind!r} ({op.name!r}); "
                              f"supported: {', '.join(KERNELS)}.")
        args = [values[n] if n in values else _constant(graph.tensors[n]) for n in op.inputs]
        values[op.outputs[0]] = kernel(graph, op, args, pow2).reshape(graph.tensors[op.outputs[0]].shape)
    return [values[n] for n in graph.outputs]


def _constant(tensor: Tensor) -> np.ndarray:
    return tensor.data.astype(np.int64)


def is_pow2_graph(graph: Graph) -> bool:
    """True when every activation and weight scale is a power of two (shift-only requantization applies)."""
    scales = [t.qparams.scale for t in graph.tensors.values() if t.dtype != "int32"]
    return all(np.all(np.frexp(np.asarray(s, np.float64))[0] == 0.5) for s in scales)


def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Float input(s) in the model's own layout (NCHW / NCT / flat, with batch) -> int8 in the IR layout."""
    t = graph.tensors[graph.inputs[0]]
    x = np.asarray(x, np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    elif x.ndim == 3 and len(t.shape) == 4:
        x = x.transpose(0, 2, 1)
    x = x.reshape(x.shape[0], *t.shape[1:])
    q = np.round(x / t.qparams.scale) + int(t.qparams.zero_point)  # ONNX QuantizeLinear: half to even
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(tensor: Tensor, q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - int(tensor.qparams.zero_point)) * tensor.qparams.scale
