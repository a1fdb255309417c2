"""Post-export pass: a static int8 Linear whose result stays float becomes one kernel with its bias.

A Linear on token sequences exports as DQ(Q(x)) -> MatMul <- Transpose(DQ(W)), then Add(DQ(int32
bias)). ONNX Runtime turns the Q/DQ MatMul into MatMulIntegerToFloat but leaves the bias Add
(and its DequantizeLinear) as separate passes over the output, while dynamic quantization gets
the bias inside its kernel. This pass writes `com.microsoft.MatMulIntegerToFloat` with the bias
directly: the same arithmetic (the int32 bias times its scale is the float bias) with one pass
less per layer. Where a quantizer reads the result (QLinear kernels) nothing changes.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch.nn as nn
from onnx import helper, numpy_helper

from edgeopt.export.onnx import register_postprocess

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producers, readers and initializers of a graph, by value name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return numpy_helper.to_array(tensor) if tensor is not None else None


def _weight(g: _Graph, name: str) -> tuple[np.ndarray, str, str] | None:
    """(int8 weight as [in, out], scale name, zero point name) of Transpose(DQ(W [out, in]))."""
    transpose = g.made_by(name, "Transpose")
    dq = g.made_by(transpose.input[0], "DequantizeLinear") if transpose is not None else None
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"] if transpose else []
    if dq is None or len(dq.input) < 3 or perm != [[1, 0]]:
        return None
    weight = g.array(dq.input[0])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if weight is None or weight.ndim != 2 or weight.dtype != np.int8 or (
            g.array(dq.input[1]) is None or g.array(dq.input[1]).ndim == 1 and axis != 0):
        return None
    return np.ascontiguousarray(weight.T), dq.input[1], dq.input[2]


def _bias(g: _Graph, add: onnx.NodeProto, matmul_out: str) -> np.ndarray | None:
    """The float bias an Add puts on the MatMul's result: DQ(int32 bias) or a float constant."""
    other = add.input[1] if add.input[0] == matmul_out else add.input[0]
    dq = g.made_by(other, "DequantizeLinear")
    if dq is not None:
        arrays = [g.array(n) for n in dq.input[:3]]
        if any(a is None for a in arrays) or arrays[0].dtype != np.int32:
            return None
        q, scale, zero = arrays
        return ((q.astype(np.float64) - zero) * scale).astype(np.float32)
    bias = g.array(other)
    return bias if bias is not None and bias.dtype == np.float32 and bias.ndim == 1 else None


def _fuse_one(g: _Graph, matmul: onnx.NodeProto, index: int) -> list[onnx.NodeProto] | None:
    dq_x = g.made_by(matmul.input[0], "DequantizeLinear")
    readers = g.readers.get(matmul.output[0], [])
    if dq_x is None or len(dq_x.input) < 3 or len(readers) != 1 or readers[0].op_type != "Add":
        return None
    if matmul.output[0] in g.outputs or g.array(dq_x.input[1]) is None:
        return None
    weight, bias = _weight(g, matmul.input[1]), _bias(g, readers[0], matmul.output[0])
    if weight is None or bias is None or bias.shape[0] != weight[0].shape[1]:
        return None
    names = [f"fused_linear_{index}.weight_q", f"fused_linear_{index}.bias"]
    g.graph.initializer.extend([numpy_helper.from_array(weight[0], names[0]),
                                numpy_helper.from_array(bias, names[1])])
    node = helper.make_node(
        "MatMulIntegerToFloat",
        [dq_x.input[0], names[0], dq_x.input[1], weight[1], dq_x.input[2], weight[2], names[1]],
        list(readers[0].output), name=f"fused_linear_{index}", domain=MS_DOMAIN)
    return [matmul, readers[0], node]


@register_postprocess
def fuse_static_linears(model: nn.Module, proto: onnx.ModelProto) -> None:
    g = _Graph(proto.graph)
    fused = 0
    for matmul in [n for n in proto.graph.node if n.op_type == "MatMul"]:
        found = _fuse_one(g, matmul, fused)
        if found is None:
            continue
        old_matmul, add, node = found
        position = list(proto.graph.node).index(add)
        proto.graph.node.insert(position, node)
        proto.graph.node.remove(old_matmul)
        proto.graph.node.remove(add)
        fused += 1
    if fused:
        _drop_dead(proto.graph)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes nothing reads any more (the replaced DQ / Transpose chains), then unused
    initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
