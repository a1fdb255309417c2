"""Peak activation memory by liveness analysis: of an ONNX graph, or of an eager PyTorch run.

Weights are not activations: initializers, Constant outputs and parameters are left out. A tensor
is live from the step that produces it (graph inputs: from the start) to its last consumer (graph
outputs: to the end); the peak is the largest sum of live tensors while any one step runs, with
its inputs and outputs both held. Runtimes reuse buffers, so this is the memory a good planner
needs, not what an allocator may hold.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from edgeopt.errors import ModelError

if TYPE_CHECKING:  # onnx is imported where a file is read: tracing a model does not need it
    import onnx


@dataclasses.dataclass(frozen=True)
class ActivationProfile:
    """Activation memory at batch 1, in bytes."""

    peak_bytes: int
    peak_at: str  # the node (or op) running at the peak
    largest_bytes: int  # the largest single activation
    largest_tensor: str
    total_bytes: int  # every activation summed: what no buffer reuse would need
    num_tensors: int
    unknown_tensors: int  # tensors whose shape could not be inferred (left out of the sums)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def profile_onnx(path: str | os.PathLike[str]) -> ActivationProfile:
    """Liveness over an ONNX graph in node order, shapes from onnx shape inference at batch 1."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)  # shapes only: skip weight data
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {str(path)!r}: {exc}") from exc
    graph = model.graph
    weights = {t.name for t in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer
    }
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # the batch: profile one sample
    del graph.value_info[:]  # stale symbolic shapes would shadow the batch-1 ones
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    sizes: dict[str, int | None] = {}
    g = inferred.graph
    for value in [*g.input, *g.value_info, *g.output]:
        sizes[value.name] = _value_bytes(value)
    nodes = []
    for node in g.node:
        if node.op_type == "Constant" or (node.input and all(i in weights for i in node.input)):
            weights.update(node.output)  # constant-folded by the runtime: e.g. DQ of a weight
            continue
        nodes.append(node)
    outputs = [v.name for v in g.output]
    alias = _fused_qdq(nodes, set(outputs))
    steps = [(node.name or node.op_type,
              [alias.get(n, n) for n in [*node.input, *_implicit_inputs(node)]],
              [alias.get(n, n) for n in node.output])
             for node in nodes if not _folded(node, alias)]
    inputs = [v.name for v in g.input if v.name not in weights]
    return liveness(steps, inputs, outputs, sizes, weights)


def _fused_qdq(nodes: list[onnx.NodeProto], outputs: set[str]) -> dict[str, str]:
    """Tensors the runtime never holds in float once it fuses Q/DQ into integer kernels.

    A DequantizeLinear feeding an operator is folded into it (the operator reads the int8
    tensor), and an operator whose only consumer is a QuantizeLinear writes int8 directly
    (QLinearConv, QLinearAdd): both float tensors alias their int8 counterparts.
    """
    consumers: dict[str, int] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
        producer.update(dict.fromkeys(node.output, node))
    alias: dict[str, str] = {}
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        elif node.op_type == "QuantizeLinear":
            # walk back through activations fused into the kernel (Conv -> Relu -> Q)
            tensor = node.input[0]
            while consumers.get(tensor) == 1 and tensor in producer and producer[
                    tensor].op_type not in ("DequantizeLinear", "QuantizeLinear"):
                alias[tensor] = node.output[0]
                source = producer[tensor]
                if source.op_type not in _FUSED_ACTIVATIONS:
                    break
                tensor = source.input[0]
    return alias


_FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid")


def _folded(node: onnx.NodeProto, alias: dict[str, str]) -> bool:
    """Q/DQ nodes whose work the neighbouring integer kernel does."""
    if node.op_type == "DequantizeLinear":
        return node.output[0] in alias
    return node.op_type == "QuantizeLinear" and node.input[0] in alias


def liveness(
    steps: list[tuple[str, list[str], list[str]]],
    inputs: list[str],
    outputs: list[str],
    sizes: dict[str, int | None],
    skip: set[str] | frozenset[str] = frozenset(),
) -> ActivationProfile:
    """Peak live bytes over `steps` of (name, input names, output names), in execution order."""
    last: dict[str, int] = {}
    for index, (_, ins, outs) in enumerate(steps):
        for name in [*ins, *outs]:
            last[name] = index
    last.update({name: len(steps) for name in outputs})  # outputs live to the end
    known = {n: s for n, s in sizes.items() if n not in skip and s is not None}
    seen = {n for _, ins, outs in steps for n in [*ins, *outs] if n and n not in skip} | set(inputs)
    held = set(inputs)
    live = sum(known.get(n, 0) for n in held)
    peak, peak_at = live, "<inputs>"
    for index, (name, ins, outs) in enumerate(steps):
        for tensor in outs:  # in-place ops and views write into a tensor already held
            if tensor and tensor not in skip and tensor not in held:
                held.add(tensor)
                live += known.get(tensor, 0)
        if live > peak:
            peak, peak_at = live, name
        for tensor in {*ins, *outs} & held:
            if last.get(tensor, index) <= index:
                held.discard(tensor)
                live -= known.get(tensor, 0)
    activations = {n: known[n] for n in seen if n in known}
    largest = max(activations.items(), key=lambda item: item[1], default=("", 0))
    return ActivationProfile(
        peak_bytes=int(peak),
        peak_at=peak_at,
        largest_bytes=int(largest[1]),
        largest_tensor=largest[0],
        total_bytes=int(sum(activations.values())),
        num_tensors=len(seen),
        unknown_tensors=len(seen - set(activations)),
    )


def _value_bytes(value: onnx.ValueInfoProto) -> int | None:
    import onnx

    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or not tensor.elem_type:
        return None
    count = 1
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        count *= dim.dim_value
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    except Exception:  # 4-bit and float8 types: count a byte each, close enough for a peak
        itemsize = 1
    return count * itemsize


def _implicit_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Outer tensors a subgraph (If/Loop/Scan body) reads: they stay live until the node ends."""
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                local.update(inner.output)
                yield from (n for n in inner.input if n and n not in local)
                yield from _implicit_inputs(inner)


class _Trace(TorchDispatchMode):
    """Records every ATen op's tensor storages; holds them so addresses are never reused."""

    def __init__(self, skip: set[int]) -> None:
        super().__init__()
        self.skip, self.steps, self.sizes, self.held = skip, [], {}, []
        self.names: dict[int, str] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        label = f"{func.__name__}#{len(self.steps)}"
        ins = [
            self.key(t, label) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        ]
        outs = [self.key(t, label) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.steps.append((label, [k for k in ins if k], [k for k in outs if k]))
        return out

    def key(self, tensor: torch.Tensor, label: str) -> str:
        """A name per storage (views and in-place results share one), from where it was first seen."""
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in self.skip:
            return ""
        if pointer not in self.names:
            self.names[pointer] = label
            self.held.append(tensor)
        name = self.names[pointer]
        self.sizes[name] = max(self.sizes.get(name, 0), storage.nbytes())
        return name


def trace_activations(
    run: Callable[[], Any], model: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int
) -> ActivationProfile:
    """Liveness over the ATen ops of one eager forward (`run`), scaled to one sample."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    trace = _Trace(skip)
    names = [trace.key(t, f"input{i}") for i, t in enumerate(inputs)]
    with trace:
        out = run()
    outputs = [trace.key(t, "output") for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    result = liveness(trace.steps, [n for n in names if n], [n for n in outputs if n], trace.sizes)
    per_sample = max(batch, 1)  # activations grow with the batch; weights were left out
    return dataclasses.replace(
        result,
        peak_bytes=result.peak_bytes // per_sample,
        largest_bytes=result.largest_bytes // per_sample,
        total_bytes=result.total_bytes // per_sample,
    )
