"""Post-export pass: a zero Pad before a quantized convolution becomes the convolution's padding.

TensorFlow-style 'SAME' padding of strided convolutions (EfficientNet, MobileNet) is asymmetric,
which PyTorch's Conv2d cannot express: models spell it as ZeroPad2d + Conv2d(padding=0). It
exports as DQ -> Pad -> Q -> DQ -> Conv, and ONNX Runtime runs that Pad in float between a
dequantize and a quantize on the convolution's full input. ONNX Conv takes asymmetric `pads`,
and QLinearConv pads with the input's zero point, which is the float 0 the Pad wrote; with the
Pad's quantizer on its input's grid (edgeopt's placement: Pad passes the grid through) the
rewrite is exact: the convolution reads the quantized input directly, with the pads inside.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch.nn as nn
from onnx import helper

from edgeopt.export.onnx import register_postprocess
from edgeopt.quantization.linear_fusion import _drop_dead, _Graph


def _constant(g: _Graph, name: str) -> np.ndarray | None:
    if not name:
        return np.zeros(())  # Pad without a value pads with zeros
    value = g.array(name)
    node = g.producer.get(name)
    if value is None and node is not None and node.op_type == "Constant":
        value = onnx.numpy_helper.to_array(node.attribute[0].t)
    return value


def _spatial_pads(g: _Graph, pad: onnx.NodeProto, rank: int) -> list[int] | None:
    """The Pad's [begin..., end...] over the spatial axes, if it pads zeros there only."""
    mode = _attribute(pad, "mode", b"constant")
    pads = _constant(g, pad.input[1])
    value = _constant(g, pad.input[2] if len(pad.input) > 2 else "")
    if mode != b"constant" or pads is None or value is None or len(pad.input) > 3:
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    if len(pads) != 2 * rank or float(value) != 0.0 or min(pads) < 0:
        return None
    begin, end = pads[:rank], pads[rank:]
    if begin[:2] != [0, 0] or end[:2] != [0, 0]:  # batch and channels untouched
        return None
    return begin[2:] + end[2:]


def _same_grid(g: _Graph, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    arrays = [[g.array(n) for n in node.input[1:3]] for node in (a, b)]
    if any(x is None for pair in arrays for x in pair) or len(a.input) < 3 or len(b.input) < 3:
        return False
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(*arrays))


def _fold_one(g: _Graph, pad: onnx.NodeProto) -> bool:
    """Fold Pad -> Q -> DQ -> Conv; the Pad's input is float or DQ on the Q's grid."""
    readers = g.readers.get(pad.output[0], [])
    q = readers[0] if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" else None
    dqs = g.readers.get(q.output[0], []) if q is not None else []
    if q is None or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
        return False
    convs = [r for d in dqs for r in g.readers.get(d.output[0], [])]
    if not convs or any(c.op_type != "Conv" or c.input[0] not in {d.output[0] for d in dqs}
                        for c in convs):
        return False
    if any(d.output[0] in g.outputs for d in dqs) or pad.output[0] in g.outputs:
        return False
    rank = 2 + len(_attribute(convs[0], "kernel_shape", []))
    spatial = _spatial_pads(g, pad, rank)
    if spatial is None or rank < 3:
        return False
    if any(_attribute(c, "auto_pad", b"NOTSET") != b"NOTSET" for c in convs):
        return False
    for conv in convs:
        _add_pads(conv, spatial)
    before = g.made_by(pad.input[0], "DequantizeLinear")
    if before is not None and _same_grid(g, before, q):
        for d in dqs:  # read the already-quantized input: no requantization at all
            d.input[0] = before.input[0]
    else:
        q.input[0] = pad.input[0]
    g.graph.node.remove(pad)
    return True


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _add_pads(conv: onnx.NodeProto, spatial: list[int]) -> None:
    current = list(_attribute(conv, "pads", [0] * len(spatial)))
    for old in [a for a in conv.attribute if a.name == "pads"]:
        conv.attribute.remove(old)
    conv.attribute.append(helper.make_attribute("pads", [a + b for a, b in zip(current, spatial)]))


@register_postprocess
def fold_pads_into_convolutions(model: nn.Module, proto: onnx.ModelProto) -> None:
    folded = 0
    for pad in [n for n in proto.graph.node if n.op_type == "Pad"]:
        g = _Graph(proto.graph)  # small graphs: rebuilt per fold, so every map stays current
        folded += _fold_one(g, pad)
    if folded:
        _drop_dead(proto.graph)
