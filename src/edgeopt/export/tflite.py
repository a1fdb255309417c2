"""Int8 TFLite export: edgeopt's integer IR (edgeopt.deploy.ir) written as a TFLite flatbuffer.

The file follows the TFLite int8 quantization spec: int8 symmetric per-channel weights (zero point 0,
quantized_dimension = the output-channel axis: 0 for CONV_2D / FULLY_CONNECTED, 3 for
DEPTHWISE_CONV_2D), int8 asymmetric per-tensor activations, int32 biases with scale
in_scale * w_scale. Every number comes from the IR, so LiteRT and TFLite Micro compute what
edgeopt's integer reference (edgeopt.deploy.reference) computes.

    eo.export_tflite(quantized_model, "out/model.tflite", example_input)
    tflm_arena_bytes("out/model.tflite")        # TFLite Micro's tensor arena for the file

The flatbuffer is written with the `flatbuffers` package and the schema classes of the `tflite`
package (generated from TFLite's schema.fbs); no TensorFlow.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.atomic import write_bytes
from edgeopt.deploy.ir import Graph, Op, QParams
from edgeopt.errors import ExportError, invalid

SCHEMA_VERSION = 3
_ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 3}  # tflite.ActivationFunctionType
_SAME, _VALID = 0, 1  # tflite.Padding
_TYPES = {"int8": 9, "int32": 2, "int4": 9}  # tflite.TensorType; int4 weights are stored as int8
_BUFFER_ALIGN = 16  # TFLite Micro reads weights and biases in place: keep them aligned


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    qparams: QParams | None = None
    data: bytes | None = None


@dataclass
class _Op:
    code: int  # tflite.BuiltinOperator
    inputs: list[int]
    outputs: list[int]
    options: str  # the options table, e.g. "Conv2DOptions"
    fields: dict[str, Any] = field(default_factory=dict)


class _Builder:
    """The TFLite subgraph being assembled: tensors by index and operators in execution order."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.tensors: list[_Tensor] = []
        self.index: dict[str, int] = {}
        self.ops: list[_Op] = []

    def tensor(self, name: str) -> int:
        """The index of IR tensor `name`, added on first use (constants with their bytes)."""
        if name not in self.index:
            t = self.graph.tensors[name]
            data = None
            if t.data is not None:
                dtype = np.int32 if t.dtype == "int32" else np.int8
                data = np.ascontiguousarray(np.asarray(t.data).astype(dtype, casting="unsafe")).tobytes()
            self.index[name] = self._add(_Tensor(name, tuple(t.shape), t.dtype, t.qparams, data))
        return self.index[name]

    def constant(self, name: str, values: list[int] | np.ndarray, shape: tuple[int, ...]) -> int:
        """An int32 constant operand (shapes, axes, paddings): no quantization."""
        data = np.asarray(values, np.int32).reshape(shape).tobytes()
        return self._add(_Tensor(name, shape, "int32", None, data))

    def int8_constant(self, name: str, value: int, like: str) -> int:
        """A one-value int8 constant on the grid of IR tensor `like` (PADV2's pad value)."""
        data = np.asarray([value], np.int8).tobytes()
        return self._add(_Tensor(name, (1,), "int8", self.graph.tensors[like].qparams, data))

    def activation(self, name: str, like: str, shape: tuple[int, ...]) -> int:
        """A new int8 activation with the quantization of IR tensor `like` (e.g. a PAD output)."""
        return self._add(_Tensor(name, shape, "int8", self.graph.tensors[like].qparams))

    def op(self, code: int, inputs: list[int], outputs: list[int], options: str, **fields: Any) -> None:
        self.ops.append(_Op(code, inputs, outputs, options, fields))

    def _add(self, tensor: _Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1


# ---------------------------------------------------------------- IR op -> TFLite operators

def _spatial_padding(b: _Builder, op: Op, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """The TFLite padding mode computing `op`'s explicit padding, and the (maybe padded) input.

    SAME when it puts the same rows and columns first and gives the output's size, VALID when
    there is no padding; otherwise, for convolutions, an explicit PAD (with the input's zero
    point, i.e. real 0, what an int8 convolution pads with) feeds a VALID operator. Pools leave
    padding out of the window: for a max pool a PADV2 with int8's minimum does the same (ceil_mode
    pools read past the bottom / right edge); an average's count only SAME expresses.
    """
    x = b.graph.tensors[op.inputs[0]]
    out = b.graph.tensors[op.outputs[0]].shape
    top, left, bottom, right = (int(p) for p in op.attrs.get("padding", (0, 0, 0, 0)))
    stride = tuple(int(s) for s in op.attrs["stride"])
    same = [_same_padding(x.shape[1 + i], kernel[i], stride[i], dilation[i]) for i in range(2)]
    if (top, left) == (same[0][0], same[1][0]) and out[1:3] == (same[0][1], same[1][1]) and any(
        (top, left, bottom, right)
    ):
        return _SAME, b.tensor(op.inputs[0])
    if not any((top, left, bottom, right)):
        return _VALID, b.tensor(op.inputs[0])
    if op.kind == "avg_pool2d":  # its count leaves padding out: a PAD op would feed it in
        raise ExportError(
            f"export_tflite: {op.name or op.kind} pads (top, left, bottom, right) = "
            f"{(top, left, bottom, right)}, which TFLite's average pooling cannot express; "
            "use padding that matches SAME or none."
        )
    shape = (x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3])
    padded = b.activation(f"{op.inputs[0]}/padded", op.inputs[0], shape)
    paddings = b.constant(f"{op.inputs[0]}/paddings", [0, 0, top, bottom, left, right, 0, 0], (4, 2))
    if op.kind == "max_pool2d":  # pad with int8's minimum: it never wins a window's max
        low = b.int8_constant(f"{op.inputs[0]}/pad_value", -128, op.inputs[0])
        b.op(60, [b.tensor(op.inputs[0]), paddings, low], [padded], "PadV2Options")
    else:
        b.op(34, [b.tensor(op.inputs[0]), paddings], [padded], "PadOptions")
    return _VALID, padded


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME: (padding before, output size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, out


def _conv(b: _Builder, op: Op) -> None:
    weight = b.graph.tensors[op.inputs[1]]
    depthwise = op.kind == "depthwise_conv2d"
    dilation = tuple(int(d) for d in op.attrs.get("dilation", (1, 1)))
    padding, x = _spatial_padding(b, op, tuple(weight.shape[1:3]), dilation)
    fields = {
        "Padding": padding,
        "StrideH": int(op.attrs["stride"][0]),
        "StrideW": int(op.attrs["stride"][1]),
        "DilationHFactor": dilation[0],
        "DilationWFactor": dilation[1],
        "FusedActivationFunction": _activation(op),
    }
    if depthwise:
        fields["DepthMultiplier"] = int(op.attrs.get("depth_multiplier", 1))
    inputs = [x, *(b.tensor(name) for name in op.inputs[1:])]
    options = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
    b.op(4 if depthwise else 3, inputs, [b.tensor(op.outputs[0])], options, **fields)


def _fully_connected(b: _Builder, op: Op) -> None:
    inputs = [b.tensor(name) for name in op.inputs]
    b.op(9, inputs, [b.tensor(op.outputs[0])], "FullyConnectedOptions",
         FusedActivationFunction=_activation(op))


def _pool(b: _Builder, op: Op) -> None:
    kernel = tuple(int(k) for k in op.attrs["kernel"])
    padding, x = _spatial_padding(b, op, kernel, (1, 1))
    code = 17 if op.kind == "max_pool2d" else 1
    b.op(code, [x], [b.tensor(op.outputs[0])], "Pool2DOptions", Padding=padding,
         StrideH=int(op.attrs["stride"][0]), StrideW=int(op.attrs["stride"][1]),
         FilterHeight=kernel[0], FilterWidth=kernel[1], FusedActivationFunction=_activation(op))


def _mean(b: _Builder, op: Op) -> None:
    axes = b.constant(f"{op.outputs[0]}/axes", [1, 2], (2,))
    b.op(40, [b.tensor(op.inputs[0]), axes], [b.tensor(op.outputs[0])], "ReducerOptions",
         KeepDims=True)


def _add(b: _Builder, op: Op) -> None:
    b.op(0, [b.tensor(name) for name in op.inputs], [b.tensor(op.outputs[0])], "AddOptions",
         FusedActivationFunction=_activation(op))


def _concat(b: _Builder, op: Op) -> None:
    b.op(2, [b.tensor(name) for name in op.inputs], [b.tensor(op.outputs[0])],
         "ConcatenationOptions", Axis=int(op.attrs["axis"]), FusedActivationFunction=_activation(op))


def _reshape(b: _Builder, op: Op) -> None:
    shape = b.graph.tensors[op.outputs[0]].shape
    target = b.constant(f"{op.outputs[0]}/shape", list(shape), (len(shape),))
    b.op(22, [b.tensor(op.inputs[0]), target], [b.tensor(op.outputs[0])], "ReshapeOptions",
         NewShape=list(shape))


def _pad(b: _Builder, op: Op) -> None:
    top, left, bottom, right = (int(p) for p in op.attrs["padding"])
    paddings = b.constant(f"{op.outputs[0]}/paddings", [0, 0, top, bottom, left, right, 0, 0], (4, 2))
    b.op(34, [b.tensor(op.inputs[0]), paddings], [b.tensor(op.outputs[0])], "PadOptions")


def _activation(op: Op) -> int:
    activation = op.attrs.get("activation", "none")
    if activation not in _ACTIVATIONS:
        raise ExportError(
            f"export_tflite: {op.name or op.kind} has activation {activation!r}; TFLite fuses "
            f"{sorted(_ACTIVATIONS)}."
        )
    return _ACTIVATIONS[activation]


# One entry per IR op kind; a new kind is one function here.
TRANSLATIONS: dict[str, Callable[[_Builder, Op], None]] = {
    "conv2d": _conv,
    "depthwise_conv2d": _conv,
    "fully_connected": _fully_connected,
    "avg_pool2d": _pool,
    "max_pool2d": _pool,
    "mean": _mean,
    "add": _add,
    "concat": _concat,
    "reshape": _reshape,
    "pad": _pad,
}


# ---------------------------------------------------------------- flatbuffer serialization

def _schema(name: str) -> Any:
    """A generated schema module of the `tflite` package (its package namespace shadows them)."""
    return importlib.import_module(f"tflite.{name}")


def _table(fb: Any, name: str, **fields: Any) -> int:
    """Write table `name` with `fields` (schema field names); lists become int32 vectors."""
    module = _schema(name)
    values = {k: fb.CreateNumpyVector(np.asarray(v, np.int32)) if isinstance(v, list) else v
              for k, v in fields.items()}
    getattr(module, f"{name}Start")(fb)
    for key, value in values.items():
        if value is not None:
            getattr(module, f"{name}Add{key}")(fb, value)
    return getattr(module, f"{name}End")(fb)


def _tables(fb: Any, offsets: list[int]) -> int:
    fb.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        fb.PrependUOffsetTRelative(offset)
    return fb.EndVector()


def _aligned_bytes(fb: Any, data: bytes) -> int:
    fb.StartVector(1, len(data), _BUFFER_ALIGN)
    fb.head -= len(data)
    fb.Bytes[fb.head : fb.head + len(data)] = data
    return fb.EndVector()


def _quantization(fb: Any, q: QParams | None) -> int | None:
    if q is None:
        return None
    scale = np.atleast_1d(np.asarray(q.scale, np.float32))
    zero_point = np.broadcast_to(np.atleast_1d(np.asarray(q.zero_point, np.int64)), scale.shape)
    return _table(fb, "QuantizationParameters", Scale=fb.CreateNumpyVector(scale),
                  ZeroPoint=fb.CreateNumpyVector(np.ascontiguousarray(zero_point)),
                  QuantizedDimension=int(q.axis or 0) if scale.size > 1 else 0)


def _serialize(b: _Builder, inputs: list[int], outputs: list[int]) -> bytes:
    fb = _flatbuffers().Builder(4096 + sum(len(t.data or b"") for t in b.tensors))
    buffers, tensor_buffer = [_table(fb, "Buffer")], []  # buffer 0: the empty sentinel
    for t in b.tensors:
        if t.data is not None:
            buffers.append(_table(fb, "Buffer", Data=_aligned_bytes(fb, t.data)))
        tensor_buffer.append(len(buffers) - 1 if t.data is not None else 0)
    tensors = [
        _table(fb, "Tensor", Name=fb.CreateString(t.name), Shape=list(t.shape), Type=_TYPES[t.dtype],
               Buffer=buf, Quantization=_quantization(fb, t.qparams))
        for t, buf in zip(b.tensors, tensor_buffer)
    ]
    codes = sorted({op.code for op in b.ops})
    options_enum = _schema("BuiltinOptions").BuiltinOptions
    operators = [
        _table(fb, "Operator", OpcodeIndex=codes.index(op.code), Inputs=op.inputs, Outputs=op.outputs,
               BuiltinOptionsType=getattr(options_enum, op.options),
               BuiltinOptions=_table(fb, op.options, **op.fields))
        for op in b.ops
    ]
    subgraph = _table(fb, "SubGraph", Tensors=_tables(fb, tensors), Inputs=inputs, Outputs=outputs,
                      Operators=_tables(fb, operators), Name=fb.CreateString("main"))
    opcodes = [_table(fb, "OperatorCode", DeprecatedBuiltinCode=min(code, 127), BuiltinCode=code,
                      Version=_op_version(code)) for code in codes]
    model = _table(fb, "Model", Version=SCHEMA_VERSION, OperatorCodes=_tables(fb, opcodes),
                   Subgraphs=_tables(fb, [subgraph]), Description=fb.CreateString("edgeopt int8"),
                   Buffers=_tables(fb, buffers))
    fb.Finish(model, file_identifier=b"TFL3")
    return bytes(fb.Output())


def _op_version(code: int) -> int:
    # The versions TFLite's converter writes for int8 (per-channel) kernels of these operators.
    return {3: 3, 4: 3, 9: 4, 1: 2, 17: 2, 40: 2, 0: 2, 2: 2, 22: 1, 34: 2}.get(code, 1)


def _flatbuffers() -> Any:
    import flatbuffers

    return flatbuffers


# ---------------------------------------------------------------- public entry points

def graph_to_tflite(graph: Graph) -> bytes:
    """The TFLite flatbuffer of an integer IR graph (int8 in, int8 out)."""
    b = _Builder(graph)
    for op in graph.ops:
        translate = TRANSLATIONS.get(op.kind)
        if translate is None:
            raise ExportError(
                f"export_tflite: operator {op.name or '?'} of kind {op.kind!r} has no TFLite "
                f"translation; supported: {', '.join(sorted(TRANSLATIONS))}."
            )
        translate(b, op)
    return _serialize(b, [b.tensor(name) for name in graph.inputs],
                      [b.tensor(name) for name in graph.outputs])


def export_tflite(model: Any, path: str | os.PathLike[str], example_input: Any, *,
                  calibration: Any = None) -> Path:
    """Write `model` (quantized by edgeopt, e.g. default PTQ) as an int8 .tflite file at `path`.

    The model is exported to QDQ ONNX, lowered to edgeopt's integer IR and written per the TFLite
    int8 spec; the input and output tensors are int8 with the model's quantization (read them
    from the interpreter's tensor details, or `io_quantization(path)`). A model whose last layer
    is float in the ONNX file gets an int8 output whose range is measured on `calibration`
    (a batch of float inputs; default: the example input alone, so pass a few hundred samples
    when their outputs vary). Written atomically; returns the path.
    """
    from edgeopt.deploy.lower import lower_model

    graph = lower_model(model, example_input, calibration)
    return write_bytes(Path(path), graph_to_tflite(graph))


# ---------------------------------------------------------------- running the file (checks, bench)

def io_quantization(model: bytes | str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], float, int]]:
    """{"input": (shape, scale, zero_point), "output": ...} of a .tflite file (first input/output)."""
    from tflite.Model import Model

    graph = Model.GetRootAs(_model_bytes(model), 0).Subgraphs(0)
    result = {}
    for key, index in (("input", graph.Inputs(0)), ("output", graph.Outputs(0))):
        t = graph.Tensors(index)
        q = t.Quantization()
        result[key] = (tuple(int(d) for d in t.ShapeAsNumpy()), float(q.Scale(0)), int(q.ZeroPoint(0)))
    return result


def quantize_inputs(model: bytes | str | os.PathLike[str], x: Any) -> np.ndarray:
    """Float inputs in the PyTorch model's layout (N, C, H, W), (N, C, T) or (N, F) as int8 rows in
    the file's input layout (channels last) and quantization, rounded as ONNX Runtime's
    QuantizeLinear rounds (float32 quotient, half to even)."""
    shape, scale, zero_point = io_quantization(model)["input"]
    x = np.asarray(x, np.float32)
    if x.ndim >= 3 and len(shape) > 2:  # channels first -> channels last; a flat input keeps torch's order
        x = np.moveaxis(x, 1, -1)
    x = x.reshape(len(x), *shape[1:])
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)


_TFLM_ARENA = 8 << 20  # generous: the arena TFLite Micro really uses is measured, not this


def _model_bytes(model: bytes | str | os.PathLike[str]) -> bytes:
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def run_litert(model: bytes | str | os.PathLike[str], inputs: np.ndarray, *,
               kernels: str = "reference") -> np.ndarray:
    """Run int8 `inputs` (a batch; each row one sample in the file's input shape) in LiteRT.

    kernels: "reference" (TFLite's reference kernels: the rounding TFLite Micro and edgeopt's
    integer reference follow), "builtin" (the optimized built-in kernels) or "xnnpack" (LiteRT's
    default: built-ins with the XNNPACK delegate, which requantizes in float32 and may differ
    by one step). Returns the int8 outputs stacked over the batch. Needs `ai-edge-litert`.
    """
    from ai_edge_litert import interpreter as litert

    resolvers = {"reference": litert.OpResolverType.BUILTIN_REF,
                 "builtin": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "xnnpack": litert.OpResolverType.BUILTIN}
    if kernels not in resolvers:
        raise invalid("run_litert.kernels", f"one of {sorted(resolvers)}", kernels)
    interp = litert.Interpreter(model_content=_model_bytes(model), num_threads=1,
                                experimental_op_resolver_type=resolvers[kernels])
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    rows = []
    for x in np.asarray(inputs, np.int8):
        interp.set_tensor(inp["index"], x.reshape(inp["shape"]))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]).reshape(-1).copy())
    return np.stack(rows)


def run_tflm(model: bytes | str | os.PathLike[str], inputs: np.ndarray) -> np.ndarray:
    """Run int8 `inputs` (a batch, as for run_litert) in TFLite Micro's Python interpreter."""
    interp = _tflm(_model_bytes(model))
    shape = interp.get_input_details(0)["shape"]
    rows = []
    for x in np.asarray(inputs, np.int8):
        interp.set_input(x.reshape(shape), 0)
        interp.invoke()
        rows.append(np.asarray(interp.get_output(0)).reshape(-1).copy())
    return np.stack(rows)


def tflm_arena_bytes(model: bytes | str | os.PathLike[str]) -> int:
    """The tensor arena TFLite Micro uses for a .tflite file (path or bytes), in bytes.

    TFLite Micro's RecordingMicroAllocator counts every arena allocation (head: the planned
    activations; tail: persistent tensors, node structs, kernel buffers); the Python interpreter
    prints that record to stderr (file descriptor 2), so it is read back from there after one
    inference on zeros.
    """
    data = _model_bytes(model)
    interp = _tflm(data)
    details = interp.get_input_details(0)
    interp.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    interp.invoke()
    text = _stderr_of(interp.print_allocations)
    for line in text.splitlines():
        if "Arena allocation total" in line:
            return int(line.split("total")[1].split()[0])
    raise ExportError(f"tflm_arena_bytes: TFLite Micro printed no arena total; got {text[:200]!r}.")


def _tflm(data: bytes) -> Any:
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(data, arena_size=max(_TFLM_ARENA, 10 * len(data)))


def _stderr_of(call: Callable[[], object]) -> str:
    """What `call` writes to file descriptor 2 (C++ code bypasses sys.stderr)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")
