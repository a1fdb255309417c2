"""QDQ int8 ONNX (what `eo.export_onnx` writes for a quantized model) -> the integer IR.

The walk follows ONNX Runtime's fusion rules: DequantizeLinear -> float op (+ Relu / Clip) ->
QuantizeLinear becomes one integer op whose output carries the QuantizeLinear's parameters. uint8
activations with zero point z become int8 with zero point z - 128 (same scale: exact). NCHW becomes
NHWC; a 1-D (N, C, T) series becomes (1, 1, T, C). The float output of the last layer gets int8
parameters from the range it takes on calibration inputs (widened by a margin).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeopt.deploy.ir import Graph, Op, QParams, Tensor
from edgeopt.errors import ExportError

SUPPORTED = ("QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "Add", "Relu", "Clip",
             "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Concat", "Reshape", "Flatten",
             "Squeeze", "Unsqueeze", "Identity")
OUTPUT_MARGIN = 1.25  # the last layer's calibrated range is widened: unseen inputs rarely saturate


@dataclass
class _Pending:
    """A float op waiting for the QuantizeLinear that gives it an int8 output."""

    kind: str
    inputs: list[str]
    attrs: dict
    name: str
    shape: tuple[int, ...]  # ONNX shape of the float result
    perm: np.ndarray | None = None  # a flatten of NHWC data: IR index -> ONNX (NCHW) index


@dataclass
class _State:
    graph: Graph
    inits: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    alias: dict[str, str] = field(default_factory=dict)  # ONNX value -> IR activation tensor
    consts: dict[str, tuple[np.ndarray, QParams]] = field(default_factory=dict)  # DQ of an initializer
    pending: dict[str, _Pending] = field(default_factory=dict)
    perm: dict[str, np.ndarray] = field(default_factory=dict)  # flattened NHWC tensor -> NCHW index
    float_input: set[str] = field(default_factory=set)


def lower_model(model: Any, example_input: Any, calibration: Any = None) -> Graph:
    """Export `model` (an edgeopt-quantized nn.Module) to a temporary QDQ ONNX file and lower it."""
    from edgeopt.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example_input)
        return lower_onnx(path, example_input if calibration is None else calibration)


def lower_onnx(path: str | Path, calibration: Any = None) -> Graph:
    """Lower a QDQ int8 ONNX file to the integer IR.

    calibration: float inputs (a batch in the model's layout) whose outputs set the int8 range of a
    float model output; without it, the range is bounded from the last layer's weights and input range.
    """
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    state = _State(Graph({}, [], [], []), {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer},
                   _shapes(proto.graph))
    state.float_input = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise ExportError(f"cannot lower ONNX node {node.name!r}: op type {node.op_type} is not supported by "
                              f"the integer back end; supported: {', '.join(SUPPORTED)}.")
        handler(state, node, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    ranges = _output_ranges(path, calibration) if calibration is not None else None
    for k, out in enumerate(proto.graph.output):
        _finish_output(state, out.name, None if ranges is None else ranges[k])
    if not state.graph.inputs:
        raise ExportError(f"{path}: no quantized input found; export a quantized model (eo.apply(QuantConfig)).")
    return state.graph


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    out = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        out[info.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    return out


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """ONNX NCHW / NCT / NC shape (batch 1) -> the IR's shape."""
    if len(shape) == 4:
        return (1, shape[2], shape[3], shape[1])
    if len(shape) == 3:
        return (1, 1, shape[2], shape[1])
    return (1, *shape[1:])


def _qparams(state: _State, scale: str, zero_point: str | None, axis: int | None = None) -> QParams:
    s = np.asarray(state.inits[scale], np.float32)
    z = state.inits[zero_point] if zero_point else np.zeros((), np.uint8)
    shift = 128 if z.dtype == np.uint8 else 0
    return QParams(s, z.astype(np.int32) - shift, axis if s.ndim else None)


def _quantize(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x, out = node.input[0], node.output[0]
    q = _qparams(state, node.input[1], node.input[2] if len(node.input) > 2 else None)
    if x in state.pending:
        _emit(state, state.pending.pop(x), out, q)
    elif x in state.alias:
        src = state.graph.tensors[state.alias[x]]
        same = np.array_equal(src.qparams.scale, q.scale) and np.array_equal(src.qparams.zero_point, q.zero_point)
        if not same:
            raise ExportError(f"cannot lower ONNX node {node.name!r}: QuantizeLinear requantizes an int8 tensor "
                              "to other parameters (a standalone requantize is not supported).")
        state.alias[out] = state.alias[x]
    elif x in state.float_input:
        shape = state.shapes[x]
        state.graph.tensors[out] = Tensor(out, nhwc_shape(shape), "int8", q)
        state.graph.inputs.append(out)
        state.alias[out] = out
    else:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: QuantizeLinear of {x!r}, which is neither "
                          "the model input nor an integer op's result.")


def _dequantize(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x, out = node.input[0], node.output[0]
    if x in state.inits:
        q = _qparams(state, node.input[1], node.input[2] if len(node.input) > 2 else None, attrs.get("axis", 1))
        state.consts[out] = (state.inits[x].astype(np.int32) - q.zero_point.reshape(
            (-1,) + (1,) * (state.inits[x].ndim - 1) if q.zero_point.ndim else ()), q)
    elif x in state.alias:
        state.alias[out] = state.alias[x]
    else:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: DequantizeLinear of {x!r}, which is not a "
                          "QuantizeLinear output or a constant.")


def _activation_input(state: _State, node: onnx.NodeProto, value: str) -> str:
    if value not in state.alias:
        raise ExportError(f"cannot lower ONNX node {node.name!r} ({node.op_type}): its input {value!r} is not "
                          "quantized (each integer op must read a DequantizeLinear of int8 activations).")
    return state.alias[value]


def _const(state: _State, node: onnx.NodeProto, value: str) -> tuple[np.ndarray, QParams]:
    if value not in state.consts:
        raise ExportError(f"cannot lower ONNX node {node.name!r} ({node.op_type}): weight {value!r} is not a "
                          "DequantizeLinear of int8 / int32 initializers.")
    return state.consts[value]


def _pend(state: _State, node: onnx.NodeProto, kind: str, inputs: list[str], attrs: dict) -> None:
    state.pending[node.output[0]] = _Pending(kind, inputs, {"activation": "none", **attrs}, node.name,
                                             state.shapes.get(node.output[0], ()))


def _add_const(state: _State, name: str, data: np.ndarray, q: QParams, dtype: str) -> str:
    state.graph.tensors[name] = Tensor(name, tuple(data.shape), dtype, q, data)
    return name


def _bias(state: _State, node: onnx.NodeProto, x: str, w_q: QParams, out_channels: int) -> np.ndarray:
    """int32 bias in units of input scale x weight scale (rescaled if the file stores another scale)."""
    unit = np.float64(state.graph.tensors[x].qparams.scale) * w_q.scale.astype(np.float64)
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(out_channels, np.int32)
    data, q = _const(state, node, node.input[2])
    if np.allclose(q.scale, unit, rtol=1e-6, atol=0):
        return data.reshape(-1).astype(np.int32)
    return np.round(data.reshape(-1) * q.scale.astype(np.float64) / unit).astype(np.int32)


def _conv(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x = _activation_input(state, node, node.input[0])
    w, w_q = _const(state, node, node.input[1])
    one_d = w.ndim == 3
    if one_d:
        w = w[:, :, None, :]
    group, cin = attrs.get("group", 1), state.graph.tensors[x].shape[3]
    kernel = w.shape[2:]
    pads = list(attrs.get("pads", [0] * (2 * (w.ndim - 2 - one_d))))
    stride = list(attrs.get("strides", [1, 1][: 2 - one_d]))
    dilation = list(attrs.get("dilations", [1, 1][: 2 - one_d]))
    if one_d:
        pads, stride, dilation = [0, pads[0], 0, pads[1]], [1, stride[0]], [1, dilation[0]]
    else:
        pads = [pads[0], pads[1], pads[2], pads[3]]
    common = {"stride": tuple(stride), "dilation": tuple(dilation), "padding": tuple(pads)}
    base = node.name or node.output[0]
    if group == 1:
        weight = np.ascontiguousarray(w.transpose(0, 2, 3, 1))  # OIHW -> OHWI
        kind = "conv2d"
    elif group == cin and w.shape[1] == 1:
        weight = np.ascontiguousarray(w.transpose(1, 2, 3, 0))  # O1HW -> 1HWO
        kind, common["depth_multiplier"] = "depthwise_conv2d", w.shape[0] // cin
    else:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: grouped convolution with {group} groups of "
                          f"{cin} channels; supported: groups = 1 or depthwise (groups = channels).")
    wq = QParams(w_q.scale.reshape(-1), np.zeros(w.shape[0], np.int32), 0 if kind == "conv2d" else 3)
    wname = _add_const(state, f"{base}.weight", weight.astype(np.int8), wq, _weight_dtype(weight))
    bias = _bias(state, node, x, wq, w.shape[0])
    bname = _add_const(state, f"{base}.bias", bias, QParams(np.float32(state.graph.tensors[x].qparams.scale)
                                                            * wq.scale, np.zeros_like(bias), 0), "int32")
    _pend(state, node, kind, [x, wname, bname], {**common, "kernel": tuple(int(k) for k in kernel)})


def _weight_dtype(weight: np.ndarray) -> str:
    """int4 where every weight fits 4 bits (a 4-bit layer): the C back end packs two per byte."""
    return "int4" if weight.min() >= -8 and weight.max() <= 7 else "int8"


def _gemm(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x = _activation_input(state, node, node.input[0])
    w, w_q = _const(state, node, node.input[1])
    if node.op_type == "MatMul" or not attrs.get("transB", 0):
        w = w.T
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: Gemm with transA / alpha / beta is not supported.")
    if x in state.perm:  # the input was flattened from NHWC: reorder the weight's columns to match
        w = w[:, state.perm[x]]
    base = node.name or node.output[0]
    scale = np.broadcast_to(w_q.scale.reshape(-1), (w.shape[0],)).astype(np.float32)
    wq = QParams(scale, np.zeros(w.shape[0], np.int32), 0)
    wname = _add_const(state, f"{base}.weight", np.ascontiguousarray(w).astype(np.int8), wq, _weight_dtype(w))
    inputs = [x, wname, _add_const(state, f"{base}.bias", _bias(state, node, x, wq, w.shape[0]),
                                   QParams(np.float32(state.graph.tensors[x].qparams.scale) * scale,
                                           np.zeros(w.shape[0], np.int32), 0), "int32")]
    _pend(state, node, "fully_connected", inputs, {})


def _add(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    a, b = (_activation_input(state, node, v) for v in node.input)
    if state.graph.tensors[a].shape != state.graph.tensors[b].shape:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: Add with broadcasting is not supported.")
    _pend(state, node, "add", [a, b], {})


def _activation(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x = node.input[0]
    if x not in state.pending or state.pending[x].attrs["activation"] != "none":
        raise ExportError(f"cannot lower ONNX node {node.name!r} ({node.op_type}): an activation must follow "
                          "a convolution, linear layer or add directly (it is fused into that op).")
    kind = "relu"
    if node.op_type == "Clip":
        lo = float(state.inits[node.input[1]]) if len(node.input) > 1 and node.input[1] else -np.inf
        hi = float(state.inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.inf
        kind = {(0.0, 6.0): "relu6", (0.0, np.inf): "relu"}.get((lo, hi))
        if kind is None:
            raise ExportError(f"cannot lower ONNX node {node.name!r}: Clip({lo}, {hi}); supported: ReLU, ReLU6.")
    pending = state.pending.pop(x)
    pending.attrs["activation"] = kind
    state.pending[node.output[0]] = pending


def _pool(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x = _activation_input(state, node, node.input[0])
    if node.op_type == "GlobalAveragePool":
        _pend(state, node, "mean", [x], {})
        return
    if any(d != 1 for d in attrs.get("dilations", [1])):
        raise ExportError(f"cannot lower ONNX node {node.name!r}: pooling with dilation.")
    kernel = list(attrs["kernel_shape"])
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    stride = list(attrs.get("strides", [1] * len(kernel)))
    if attrs.get("ceil_mode", 0):
        pads = _ceil_mode_pads(state, node, kernel, stride, pads)
    if len(kernel) == 1:
        kernel, stride, pads = [1, kernel[0]], [1, stride[0]], [0, pads[0], 0, pads[1]]
    if node.op_type == "AveragePool" and attrs.get("count_include_pad", 0) and any(pads):
        raise ExportError(f"cannot lower ONNX node {node.name!r}: AveragePool counting padding.")
    kind = "max_pool2d" if node.op_type == "MaxPool" else "avg_pool2d"
    _pend(state, node, kind, [x], {"kernel": tuple(kernel), "stride": tuple(stride), "padding": tuple(pads)})


def _ceil_mode_pads(state: _State, node: onnx.NodeProto, kernel: list[int], stride: list[int],
                    pads: list[int]) -> list[int]:
    """ceil_mode as floor mode with more padding at the end (bottom / right): the last window,
    which starts inside the input, reads past it; pools leave padding out of the window."""
    rank = len(kernel)
    sizes, outs = state.shapes[node.input[0]][2:], state.shapes[node.output[0]][2:]
    ends = [max(0, (o - 1) * s + k - (n + b + e)) + e
            for n, o, k, s, b, e in zip(sizes, outs, kernel, stride, pads[:rank], pads[rank:])]
    return pads[:rank] + ends


def _reduce_mean(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x = _activation_input(state, node, node.input[0])
    rank = len(state.shapes[node.input[0]])
    axes = attrs.get("axes") or (list(state.inits[node.input[1]]) if len(node.input) > 1 else [])
    axes = sorted(int(a) % rank for a in axes)
    if axes not in ([2, 3], [2]) or rank != axes[-1] + 1:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: ReduceMean over axes {axes} of a rank-{rank} "
                          "tensor; supported: the spatial (or time) axes, a global average.")
    _pend(state, node, "mean", [x], {})


def _concat(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    inputs = [_activation_input(state, node, v) for v in node.input]
    rank = len(state.shapes[node.output[0]])
    axis = attrs["axis"] % rank
    ir_axis = {4: {1: 3, 2: 1, 3: 2}, 3: {1: 3, 2: 2}, 2: {1: 1}}[rank].get(axis)
    if ir_axis is None:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: Concat along the batch axis.")
    _pend(state, node, "concat", inputs, {"axis": ir_axis})


def _reshape(state: _State, node: onnx.NodeProto, attrs: dict) -> None:
    x, out = node.input[0], node.output[0]
    shape = nhwc_shape(state.shapes[out])
    if x in state.float_input:  # a reshape of the float input (flatten before quantizing): the IR input
        state.float_input.add(out)
        return
    if x in state.pending:
        if nhwc_shape(state.pending[x].shape) != shape:
            raise ExportError(f"cannot lower ONNX node {node.name!r}: {node.op_type} between an op and its "
                              "QuantizeLinear changes the data layout.")
        state.pending[out] = state.pending.pop(x)
        return
    src = _activation_input(state, node, x)
    if state.graph.tensors[src].shape == shape:
        state.alias[out] = src
        return
    in_shape = state.graph.tensors[src].shape
    _pend(state, node, "reshape", [src], {})
    if len(in_shape) == 4 and len(shape) == 2 and in_shape[1] * in_shape[2] > 1 and in_shape[3] > 1:
        _, h, w, c = in_shape  # IR order (h, w, c) of the ONNX order (c, h, w)
        state.pending[out].perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    elif len(shape) != 2 and len(in_shape) != 2:
        raise ExportError(f"cannot lower ONNX node {node.name!r}: reshape {in_shape} -> {shape}; supported: "
                          "flattening to (batch, features) and size-1 axes.")


def _emit(state: _State, pending: _Pending, out: str, q: QParams) -> None:
    shape = nhwc_shape(pending.shape)
    if pending.kind == "mean":
        shape = (1, 1, 1, state.graph.tensors[pending.inputs[0]].shape[3])
    state.graph.tensors[out] = Tensor(out, shape, "int8", q)
    state.graph.ops.append(Op(pending.kind, pending.inputs, [out], pending.attrs, pending.name))
    state.alias[out] = out
    if pending.perm is not None:
        state.perm[out] = pending.perm


def _finish_output(state: _State, name: str, value_range: tuple[float, float] | None) -> None:
    if name in state.alias:
        state.graph.outputs.append(state.alias[name])
        return
    if name not in state.pending:
        raise ExportError(f"cannot lower: model output {name!r} is not an integer op's result.")
    pending = state.pending.pop(name)
    if value_range is None:
        value_range = _bound(state, pending)
    lo, hi = min(value_range[0], 0.0) * OUTPUT_MARGIN, max(value_range[1], 0.0) * OUTPUT_MARGIN
    scale = np.float32(max(hi - lo, 1e-8) / 255.0)
    if _all_pow2(state.graph):  # keep a power-of-two graph shift-only: round the output scale up
        scale = np.float32(2.0 ** np.ceil(np.log2(scale)))
    zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    _emit(state, pending, "output", QParams(scale, np.asarray(zp, np.int32)))
    state.graph.outputs.append("output")


def _all_pow2(graph: Graph) -> bool:
    scales = [np.asarray(t.qparams.scale, np.float64) for t in graph.tensors.values() if t.dtype != "int32"]
    return bool(scales) and all(np.all(np.frexp(s)[0] == 0.5) for s in scales)


def _bound(state: _State, pending: _Pending) -> tuple[float, float]:
    """The range a linear layer's output can take, from its weights and its input's int8 range."""
    if pending.kind not in ("fully_connected", "conv2d"):
        raise ExportError(f"cannot bound the float output of {pending.name!r}; pass calibration inputs.")
    x, w, b = (state.graph.tensors[n] for n in pending.inputs)
    xq = x.qparams
    xlo, xhi = (float(xq.scale) * (v - int(xq.zero_point)) for v in (-128, 127))
    wf = w.data.reshape(w.shape[0], -1) * w.qparams.scale.reshape(-1, 1)
    bf = b.data * b.qparams.scale
    hi = (np.maximum(wf * xlo, wf * xhi).sum(1) + bf).max()
    lo = (np.minimum(wf * xlo, wf * xhi).sum(1) + bf).min()
    return float(lo) / OUTPUT_MARGIN, float(hi) / OUTPUT_MARGIN


def _output_ranges(path: str | Path, calibration: Any) -> list[tuple[float, float]]:
    import onnxruntime as ort

    data = np.asarray(calibration.detach().cpu().numpy() if hasattr(calibration, "detach") else calibration,
                      np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: data[i:i + 1]}) for i in range(len(data))]
    return [(float(min(o[k].min() for o in outs)), float(max(o[k].max() for o in outs)))
            for k in range(len(outs[0]))]


_HANDLERS = {
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "Conv": _conv, "Gemm": _gemm,
    "MatMul": _gemm, "Add": _add, "Relu": _activation, "Clip": _activation, "MaxPool": _pool,
    "AveragePool": _pool, "GlobalAveragePool": _pool, "ReduceMean": _reduce_mean, "Concat": _concat,
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Identity": _reshape,
}
