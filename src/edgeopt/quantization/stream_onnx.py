"""One ONNX model written piece by piece: each piece (embedding, a decoder block, the head) is
exported alone with the project's exporter and post-export passes, its tensor names prefixed,
its weights appended to one external data file (onnx's external data helpers) and dropped from
memory; only the graph structure is kept until the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import external_data_helper
from safetensors.torch import save_file
from torch import nn

from edgeopt.atomic import ensure_writable_dir
from edgeopt.export import onnx as onnx_export
from edgeopt.quantization import packing  # noqa: F401  (registers the int4 export pass)

ALIGN = 4096
INLINE_BYTES = 1024  # smaller tensors (shape constants) stay in the graph, as onnx's helper does  # external tensors start on page boundaries (ONNX Runtime can map them)


class StitchedWriter:
    """Collects pieces whose outputs feed the next piece's inputs by position."""

    def __init__(self, path: Path, opset: int) -> None:
        self.path = path
        self.data_path = path.with_name(path.name + ".data")
        ensure_writable_dir(path.parent, what="quantize_checkpoint")
        self.opset = opset
        self.graph = onnx.GraphProto(name="edgeopt_streamed")
        self.opsets: dict[str, int] = {}
        self.functions: dict[tuple[str, str], onnx.FunctionProto] = {}
        self.links: list[str] = []  # names of the previous piece's outputs
        self.partial = path.with_name(f".{path.name}.partial")
        self.data = open(self.partial.with_suffix(".data"), "wb")  # noqa: SIM115 (kept open)

    def add(self, name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        proto = export_piece(module, args, self.opset)
        first = not self.links
        inputs = [v.name for v in proto.graph.input]
        outputs = [v.name for v in proto.graph.output]
        renames = {} if first else dict(zip(inputs, self.links))
        renames.update({out: f"{name}:out{i}" for i, out in enumerate(outputs)})
        _rename(proto.graph, renames, f"{name}/")
        for tensor in proto.graph.initializer:
            if len(tensor.raw_data) >= INLINE_BYTES:
                self._externalize(tensor)
        if first:
            self.graph.input.extend(_copy(v) for v in proto.graph.input)
        self.graph.initializer.extend(proto.graph.initializer)
        self.graph.node.extend(proto.graph.node)
        # A block passes on the hidden state; the position tables flow on from the head.
        self.links = [renames[out] for out in outputs] + self.links[len(outputs):]
        # copies: a reference into `proto` would keep its whole arena (the raw weights) alive
        self._last_outputs = [_copy(v) for v in proto.graph.output]
        for entry in proto.opset_import:
            self.opsets[entry.domain] = max(self.opsets.get(entry.domain, 0), entry.version)
        for function in proto.functions:
            self.functions.setdefault((function.domain, function.name), function)

    def add_head(self, name: str, embedding: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> None:
        """The first piece, built by hand: token ids -> (embedding rows, cos, sin rows of the
        position tables [positions, dim]). The table goes from the tensor's own memory straight
        into the data file (the exporter would hold several copies of a 32k-row table)."""
        helper, prefix = onnx.helper, f"{name}/"
        ids = helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64,
                                            ["batch", "sequence"])
        table = onnx.TensorProto(name=prefix + "embed.weight", dims=list(embedding.shape),
                                 data_type=onnx.TensorProto.FLOAT)
        self._externalize(table, memoryview(embedding.float().contiguous().numpy()).cast("B"))
        consts = [onnx.numpy_helper.from_array(t.float().contiguous().numpy(), prefix + n)
                  for n, t in (("cos", cos), ("sin", sin))]
        consts += [onnx.numpy_helper.from_array(v, prefix + n) for n, v in (
            ("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64)),
            ("width", np.array([cos.shape[-1]], np.int64)))]
        for tensor in consts:
            if len(tensor.raw_data) >= INLINE_BYTES:
                self._externalize(tensor)
        p = prefix
        nodes = [
            helper.make_node("Gather", [table.name, "input_ids"], [f"{name}:out0"]),
            helper.make_node("Shape", ["input_ids"], [p + "shape"]),
            helper.make_node("Gather", [p + "shape", p + "one"], [p + "length"], axis=0),
            helper.make_node("Range", [p + "zero", p + "length", p + "one"], [p + "positions"]),
            helper.make_node("Concat", [p + "shape", p + "width"], [p + "out_shape"], axis=0),
        ]
        for index, kind in ((1, "cos"), (2, "sin")):
            nodes += [helper.make_node("Gather", [p + kind, p + "positions"], [p + kind + "_rows"]),
                      helper.make_node("Expand", [p + kind + "_rows", p + "out_shape"],
                                       [f"{name}:out{index}"])]
        self.graph.input.append(ids)
        self.graph.initializer.extend([table, *consts])
        self.graph.node.extend(nodes)
        self.links = [f"{name}:out{i}" for i in range(3)]
        self.opsets[""] = max(self.opsets.get("", 0), self.opset)

    def _externalize(self, tensor: onnx.TensorProto, raw: memoryview | bytes | None = None
                     ) -> None:
        if raw is None:
            raw = tensor.raw_data
        else:
            tensor.raw_data = b""  # the helper checks the field is there; the bytes are below
        offset = self.data.tell()
        pad = -offset % ALIGN
        self.data.write(b"\0" * pad)
        self.data.write(raw)
        external_data_helper.set_external_data(tensor, self.data_path.name, offset + pad,
                                               len(raw))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL

    def finish(self) -> Path:
        """Write the graph file; both files appear under their names only when complete."""
        self.data.close()
        self.graph.output.extend(self._last_outputs)
        model = onnx.helper.make_model(
            self.graph, producer_name="edgeopt", functions=list(self.functions.values()),
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self.opsets.items()])
        model.ir_version = 10
        onnx.save(model, str(self.partial))
        os.replace(self.partial.with_suffix(".data"), self.data_path)
        os.replace(self.partial, self.path)
        return self.path


def export_piece(module: nn.Module, args: tuple[torch.Tensor, ...], opset: int
                 ) -> onnx.ModelProto:
    """One piece as ONNX with batch and sequence (axis 1) dynamic, after the post-export passes
    (4-bit MatMulNBits), initializers as raw bytes."""
    args = tuple(torch.cat([a, a])[:2] if a.shape[0] < 2 else a for a in args)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim.DYNAMIC
    shapes = tuple({0: batch, 1: sequence} for _ in args)
    module.eval()
    program = onnx_export._export(module, args, opset, shapes)
    proto = program.model_proto
    for postprocess in onnx_export._POSTPROCESS:
        postprocess(module, proto)
    onnx_export._store_raw(proto.graph)
    onnx_export._strip_debug_info(proto.graph)
    return proto


def _copy(message: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    return onnx.ValueInfoProto.FromString(message.SerializeToString())


def _rename(graph: onnx.GraphProto, renames: dict[str, str], prefix: str) -> None:
    """Give every value of a piece a name unique in the whole model."""

    def new(name: str) -> str:
        return name if not name else renames.get(name, prefix + name)

    for value in [*graph.input, *graph.output]:
        value.name = new(value.name)
    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = prefix + node.name


def save_state(module: nn.Module, path: Path) -> Path:
    """The module's tensors (quantized integers, scales, norms) as one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return path
