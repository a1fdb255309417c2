"""One ONNX model written piece by piece: each piece (embedding, a decoder block, the head) is
exported alone with the project's exporter and post-export passes, its tensor names prefixed,
its weights appended to one external data file (onnx's external data helpers) and dropped from
memory; only the graph structure is kept until the end.

Decoder blocks share one structure, so only the first is exported: later blocks reuse its graph
(a `Template`) with their own tensors written straight from the module's buffers, which saves
an export per block (time, and the memory the exporter keeps from one export to the next).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import external_data_helper
from safetensors.torch import save_file
from torch import nn

from edgeopt.atomic import ensure_writable_dir
from edgeopt.export import onnx as onnx_export
from edgeopt.quantization import packing  # also registers the int4 export pass
from edgeopt.quantization.modules import GroupedLinear

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
        self.templates: dict[str, Template | None] = {}
        self.reused = 0  # pieces built from a template rather than exported

    def add(self, name: str, module: nn.Module, args: tuple[torch.Tensor, ...], *,
            shared: str | None = None, narrow: str | None = None) -> None:
        """Append a piece. Pieces with the same `shared` key (decoder blocks) have one graph:
        the first is exported, later ones reuse it with their own tensors, or are exported too
        when their tensors do not line up with it. `narrow`: a wide 4-bit layer of the piece
        (lm_head), exported narrow and widened (`export_narrow`)."""
        template = self.templates.get(shared) if shared else None
        proto = template.instantiate(module, self._externalize) if template else None
        if proto is None and narrow is not None:
            proto = export_narrow(module, narrow, args, self.opset, self._externalize)
        if proto is None:
            proto, made = export_piece(module, args, self.opset, template=shared is not None)
            if shared and shared not in self.templates:
                self.templates[shared] = made
        else:
            self.reused += 1
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

    def add_head(self, name: str, rows: Callable[[int, int], torch.Tensor],
                 shape: tuple[int, int], cos: torch.Tensor, sin: torch.Tensor) -> None:
        """The first piece, built by hand: token ids -> (embedding rows, cos, sin rows of the
        position tables [positions, dim]). The table [vocabulary, width] goes into the data file
        a slice of `rows(start, stop)` at a time (the exporter would hold several copies of a
        32k-row table)."""
        helper, prefix = onnx.helper, f"{name}/"
        ids = helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64,
                                            ["batch", "sequence"])
        table = onnx.TensorProto(name=prefix + "embed.weight", dims=list(shape),
                                 data_type=onnx.TensorProto.FLOAT)
        step = max(1, (1 << 21) // shape[1])
        self._externalize(table, (memoryview(rows(start, start + step).float().contiguous()
                                             .numpy()).cast("B")
                                  for start in range(0, shape[0], step)))
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

    def _externalize(self, tensor: onnx.TensorProto,
                     raw: memoryview | bytes | Iterable[memoryview] | None = None) -> None:
        """Append the tensor's bytes (its raw_data, `raw`, or the pieces `raw` yields) to the
        data file and point the tensor at them."""
        if raw is None:
            raw = tensor.raw_data
        else:
            tensor.raw_data = b""  # the helper checks the field is there; the bytes are below
        offset = self.data.tell()
        pad = -offset % ALIGN
        self.data.write(b"\0" * pad)
        for piece in [raw] if isinstance(raw, bytes | memoryview) else raw:
            self.data.write(piece)
        external_data_helper.set_external_data(tensor, self.data_path.name, offset + pad,
                                               self.data.tell() - offset - pad)
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


def export_piece(module: nn.Module, args: tuple[torch.Tensor, ...], opset: int, *,
                 template: bool = False) -> tuple[onnx.ModelProto, Template | None]:
    """One piece as ONNX with batch and sequence (axis 1) dynamic, after the post-export passes
    (4-bit MatMulNBits), initializers as raw bytes; with `template`, also the graph other
    modules of the same structure can reuse (None when this one cannot be reused)."""
    args = tuple(torch.cat([a, a])[:2] if a.shape[0] < 2 else a for a in args)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim.DYNAMIC
    shapes = tuple({0: batch, 1: sequence} for _ in args)
    module.eval()
    program = onnx_export._export(module, args, opset, shapes)
    proto = program.model_proto
    state = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    sources = _sources(proto.graph, state) if template else None
    for postprocess in onnx_export.postprocesses():
        postprocess(module, proto)
    onnx_export._store_raw(proto.graph)
    onnx_export._strip_debug_info(proto.graph)
    made = Template.build(proto, module, state, sources) if sources is not None else None
    return proto, made


NARROW = 16  # output features of a wide layer's stand-in


def export_narrow(module: nn.Module, layer_name: str, args: tuple[torch.Tensor, ...], opset: int,
                  store: Callable[..., None]) -> onnx.ModelProto | None:
    """`module` exported with its 4-bit grouped layer `layer_name` cut to its first NARROW output
    features, then given the layer's own packed tensors (handed to `store`) and width: neither
    the exporter nor the packing pass holds a copy of a 32k-row lm_head. None when the layer is
    not that kind, is narrow already, or its zero points pack differently from the stand-in's
    (the caller exports it whole)."""
    layer = module.get_submodule(layer_name)
    if not isinstance(layer, GroupedLinear) or layer.spec.bits > 4 or \
            layer.weight_q.shape[1] <= NARROW:
        return None
    stand_in = copy.copy(layer)
    stand_in._buffers = {key: None if value is None else value[..., :NARROW].clone()
                         for key, value in layer._buffers.items()}
    with _swapped(module, layer_name, stand_in):
        proto, _ = export_piece(module, args, opset)
    arrays = packing.layer_nbits(layer)
    names = {layer_name + suffix: array for suffix, array in
             zip(packing.NBITS_SUFFIXES, arrays, strict=True)}
    present = {t.name for t in proto.graph.initializer}
    if {n for n, a in names.items() if a is not None} != present & names.keys():
        return None
    if layer.bias is not None:
        names[f"{layer_name}.bias"] = layer.bias.detach().contiguous().numpy()
    for tensor in proto.graph.initializer:
        if names.get(tensor.name) is not None:
            value = names[tensor.name]
            del tensor.dims[:]
            tensor.dims.extend(value.shape)
            store(tensor, memoryview(np.ascontiguousarray(value)).cast("B"))
    width = layer.weight_q.shape[1]
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and node.name == f"{layer_name}.nbits":
            next(a for a in node.attribute if a.name == "N").i = width
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[-1].dim_value = width
    return proto


@contextlib.contextmanager
def _swapped(module: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    original = getattr(parent, attr)
    setattr(parent, attr, replacement)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def _sources(graph: onnx.GraphProto, state: dict[str, torch.Tensor]
             ) -> dict[str, tuple[str, ...]] | None:
    """Exported initializer -> the state tensors it holds. The exporter merges equal
    initializers (two RMSNorm gains of ones, all-zero zero points), so a tensor missing under
    its own name is found by value; None when one is not there at all (folded into another)."""
    inits = {t.name: t for t in graph.initializer}
    sources: dict[str, list[str]] = {}
    for key, tensor in state.items():
        if key in inits:
            sources.setdefault(key, []).append(key)
            continue
        value = _bytes(tensor)
        match = next((n for n, t in inits.items() if list(t.dims) == list(tensor.shape)
                      and onnx.numpy_helper.to_array(t).tobytes() == value), None)
        if match is None:
            return None
        sources.setdefault(match, []).append(key)
    return {name: tuple(keys) for name, keys in sources.items()}


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().numpy().tobytes()


@dataclasses.dataclass
class Template:
    """A piece's exported graph without its tensors, and where each tensor comes from: a state
    tensor of the module (`sources`), MatMulNBits tensors packed from a 4-bit layer (`packed`),
    or a constant of the structure (kept, small)."""

    proto: onnx.ModelProto  # initializers without data, except the constants
    sources: dict[str, tuple[str, ...]]
    packed: dict[str, tuple[str, int]]  # initializer -> (layer name, index in layer_nbits)
    signature: dict[str, tuple[tuple[int, ...], torch.dtype]]

    @classmethod
    def build(cls, proto: onnx.ModelProto, module: nn.Module, state: dict[str, torch.Tensor],
              sources: dict[str, tuple[str, ...]]) -> Template | None:
        low_bit = {name.removesuffix(".weight_q") for name in packing._low_bit_weights(module)}
        graph = onnx.ModelProto()
        graph.CopyFrom(proto)
        packed, kept = {}, {}
        for tensor in graph.graph.initializer:
            layer, suffix = _split_nbits(tensor.name)
            if layer in low_bit:
                packed[tensor.name] = (layer, packing.NBITS_SUFFIXES.index(suffix))
            elif tensor.name in sources:
                kept[tensor.name] = sources[tensor.name]
            elif len(tensor.raw_data) >= INLINE_BYTES:
                return None  # a large tensor of unknown origin: export every piece
            else:
                continue
            tensor.ClearField("raw_data")
        signature = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        return cls(graph, kept, packed, signature)

    def instantiate(self, module: nn.Module, store: Callable[..., None]
                    ) -> onnx.ModelProto | None:
        """The graph with `module`'s tensors (large ones handed to `store` with their bytes);
        None when `module` does not line up (other shapes, tensors the template holds as one
        now differ, another zero-point layout): the caller exports it instead."""
        state = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
        if {k: (tuple(v.shape), v.dtype) for k, v in state.items()} != self.signature:
            return None
        values = self._values(module, state)
        if values is None:
            return None
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        filled = [(t, values[t.name]) for t in proto.graph.initializer if t.name in values]
        if any(onnx.helper.np_dtype_to_tensor_dtype(v.dtype) != t.data_type
               or list(v.shape) != list(t.dims) for t, v in filled):
            return None
        for tensor, value in filled:
            raw = memoryview(np.ascontiguousarray(value)).cast("B")
            if len(raw) >= INLINE_BYTES:
                store(tensor, raw)
            else:
                tensor.raw_data = raw.tobytes()
        return proto

    def _values(self, module: nn.Module, state: dict[str, torch.Tensor]
                ) -> dict[str, np.ndarray] | None:
        values: dict[str, np.ndarray] = {}
        for name, keys in self.sources.items():
            first = state[keys[0]]
            if any(not torch.equal(state[k], first) for k in keys[1:]):
                return None  # the exporter merged them in the template; here they differ
            values[name] = first.detach().contiguous().numpy()
        layers: dict[str, tuple[np.ndarray, ...]] = {}
        for name, (layer, index) in self.packed.items():
            if layer not in layers:
                layers[layer] = packing.layer_nbits(module.get_submodule(layer))
            if layers[layer][index] is None:
                return None
            values[name] = layers[layer][index]
        wanted = {(layer, i) for layer, i in self.packed.values()}
        if any(arrays[2] is not None and (layer, 2) not in wanted
               for layer, arrays in layers.items()):
            return None  # zero points the template's graph has no input for
        return values


def _split_nbits(name: str) -> tuple[str, str]:
    for suffix in packing.NBITS_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return "", ""


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
