"""Post-export pass: 4-bit grouped weights become ONNX Runtime's MatMulNBits kernel.

PyTorch has no 4-bit dtype, so low-bit weights travel through the exporter in int8 containers
as block-wise DequantizeLinear -> MatMul. This pass rewrites each such pair into one
`com.microsoft.MatMulNBits` node with the weights packed two per byte, so the stored size is the
real one and the runtime's 4-bit kernel runs (its own DQ->MatMul fusion is pre-empted when the
optimizer first merges MatMul + Add into Gemm).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch.nn as nn
from onnx import helper, numpy_helper

from edgeopt.export.onnx import register_postprocess
from edgeopt.quantization.modules import GroupedLinear

MS_DOMAIN = "com.microsoft"
SLICE_VALUES = 1 << 22  # integers packed at a time
NBITS_SUFFIXES = (".nbits_B", ".nbits_scales", ".nbits_zero_points")


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values along the last axis into bytes, the first in the low nibble."""
    v = values.astype(np.uint8) & 0x0F
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], 1), dtype=np.uint8)], axis=-1)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def _low_bit_weights(model: nn.Module) -> dict[str, int]:
    """Initializer name of each 4-bit grouped weight -> offset that makes its values unsigned."""
    return {f"{name}.weight_q": 8 if module.weight_q.dtype.is_signed else 0
            for name, module in model.named_modules()
            if isinstance(module, GroupedLinear) and module.spec.bits <= 4}


def matmul_nbits_inputs(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, offset: int,
                        block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' B [N, blocks, block/2], scales [N*blocks], zero points (None = default 8).

    Packed a slice of output features at a time in uint8 (values in [-8, 7] plus the offset wrap
    to [0, 15] modulo 256), so a 32k-row lm_head needs no wider copy of its integers."""
    k, n = q.shape
    blocks = k // block
    packed = np.empty((n, blocks, (block + 1) // 2), dtype=np.uint8)
    step = max(1, SLICE_VALUES // k)
    for start in range(0, n, step):
        part = q[:, start:start + step].T.astype(np.uint8)  # a [step, K] copy
        part += np.uint8(offset)
        packed[start:start + step] = pack_nibbles(part.reshape(-1, blocks, block))
    scales = np.ascontiguousarray(scale.T.astype(np.float32)).reshape(-1)
    zeros = zero.T.astype(np.int16) + offset  # [N, blocks]: small
    if (zeros == 8).all():
        return packed, scales, None
    return packed, scales, pack_nibbles(zeros).reshape(-1)


def layer_nbits(layer: GroupedLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The MatMulNBits inputs of one 4-bit grouped layer, from its own buffers (what the pass
    below computes from the exported initializers)."""
    return matmul_nbits_inputs(layer.weight_q.numpy(), layer.weight_scale.numpy(),
                               layer.weight_zero_point.numpy(),
                               8 if layer.weight_q.dtype.is_signed else 0, layer.group_size)


@register_postprocess
def rewrite_int4_matmuls(model: nn.Module, proto: onnx.ModelProto) -> None:
    wanted = _low_bit_weights(model)
    if not wanted:
        return
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    replaced: set[str] = set()
    for index, node in enumerate(list(graph.node)):
        dq = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in wanted:
            continue
        arrays = [numpy_helper.to_array(inits[name]) for name in dq.input[:3]]
        block = next(a.i for a in dq.attribute if a.name == "block_size")
        packed, scales, zeros = matmul_nbits_inputs(*arrays, wanted[dq.input[0]], block)
        prefix = dq.input[0].removesuffix(".weight_q")
        names = [prefix + suffix for suffix in NBITS_SUFFIXES]
        graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in
                                 zip((packed, scales, zeros), names) if a is not None)
        inputs = [node.input[0], names[0], names[1]] + ([names[2]] if zeros is not None else [])
        k, n = arrays[0].shape
        new = helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{prefix}.nbits",
                               domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=block,
                               accuracy_level=4)
        graph.node.remove(node)
        graph.node.insert(index, new)
        replaced.add(dq.output[0])
    _drop_unused(graph, replaced)
    if replaced and not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _drop_unused(graph: onnx.GraphProto, dead_outputs: set[str]) -> None:
    """Remove the DequantizeLinear nodes now feeding nothing and their initializers."""
    for node in [n for n in graph.node if n.output and n.output[0] in dead_outputs]:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
