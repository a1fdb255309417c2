"""How each traced op relates the channels of its inputs and output: a table keyed by op.

A rule gets the graph `Builder` and the node and returns the node's per-dimension info: a list
(one entry per output dimension) of atom arrays (tracked), `Origin`s or None. Ops missing from
`RULES` pin the channels of their inputs (safe, never wrong). Add a rule for a new op with
`RULES[torch.ops.aten.my_op] = fn`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from edgeopt.pruning.graph import Builder, Info, Origin

aten = torch.ops.aten
Rule = Callable[[Builder, fx.Node], Any]
RULES: dict[Any, Rule] = {}


def rule(*ops: Any) -> Callable[[Rule], Rule]:
    def add(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return add


def apply_rule(b: Builder, node: fx.Node) -> Any:
    target = node.target
    fn = RULES.get(target) or RULES.get(getattr(target, "overloadpacket", None))
    if fn is None:
        return unknown(b, node)
    return fn(b, node)


def unknown(b: Builder, node: fx.Node) -> Any:
    b.pin_args(node)
    return b.untracked(node)


def _tracked(info: Info) -> bool:
    return isinstance(info, np.ndarray)


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# -- layers --------------------------------------------------------------------------------
@rule(aten.linear)
def _linear(b: Builder, node: fx.Node) -> Any:
    x, w = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    wp = b.param(w)
    if wp is None:
        return unknown(b, node)
    xm = b.meta(x)
    b.couple([xm[-1], Origin(wp, 1)])
    atoms = b.fresh(b.shape(node)[-1])
    b.record(wp, 0, atoms)
    b.record(b.param(bias), 0, atoms)
    return list(xm[:-1]) + [atoms]


def _conv(b: Builder, node: fx.Node, bias: Any, groups: int, transposed: bool) -> Any:
    x, w = node.args[0], node.args[1]
    wp = b.param(w)
    if wp is None:
        return unknown(b, node)
    xm, out_shape = b.meta(x), b.shape(node)
    cin, cout = b.shape(x)[1], out_shape[1]
    b.pin(*xm[2:])
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    if groups == 1:
        b.couple([xm[1], Origin(wp, in_dim)])
        atoms = b.fresh(cout)
    elif not transposed and groups == cin == cout:  # depthwise: output channel i reads input i
        atoms = xm[1] if _tracked(xm[1]) else b.fresh(cout)
        if not _tracked(xm[1]):
            b.pin(atoms)
    else:  # grouped: channels can only go by whole groups, which this table does not do
        b.pin(xm[1])
        atoms = b.fresh(cout)
        b.pin(atoms)
    b.record(wp, 0 if groups != 1 else out_dim, atoms)
    b.record(b.param(bias), 0, atoms)
    return [xm[0], atoms] + [None] * (len(out_shape) - 2)


@rule(aten.conv1d, aten.conv2d, aten.conv3d)
def _convnd(b: Builder, node: fx.Node) -> Any:
    args = list(node.args) + [None] * (7 - len(node.args))
    groups = node.kwargs.get("groups", args[6] if args[6] is not None else 1)
    return _conv(b, node, node.kwargs.get("bias", args[2]), int(groups), False)


@rule(aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
def _conv_transpose(b: Builder, node: fx.Node) -> Any:
    args = list(node.args) + [None] * (8 - len(node.args))
    groups = node.kwargs.get("groups", args[6] if args[6] is not None else 1)
    return _conv(b, node, node.kwargs.get("bias", args[2]), int(groups), True)


@rule(aten.convolution)
def _convolution(b: Builder, node: fx.Node) -> Any:
    return _conv(b, node, node.args[2], int(node.args[8]), bool(node.args[6]))


@rule(aten.embedding)
def _embedding(b: Builder, node: fx.Node) -> Any:
    w, idx = node.args[0], node.args[1]
    wp = b.param(w)
    if wp is None:
        return unknown(b, node)
    b.pin_meta(b.meta(idx))
    atoms = b.fresh(b.shape(node)[-1])
    b.record(wp, 1, atoms)
    return [None] * (len(b.shape(node)) - 1) + [atoms]


# -- normalization -------------------------------------------------------------------------
@rule(aten.batch_norm, aten.instance_norm, aten._native_batch_norm_legit_no_training,
      aten._native_batch_norm_legit, aten.native_batch_norm)
def _batch_norm(b: Builder, node: fx.Node) -> Any:
    xm = b.meta(node.args[0])
    params = [b.param(a) for a in node.args[1:5]]
    b.couple([xm[1]] + [Origin(p, 0) for p in params if p is not None])
    if isinstance(node.meta.get("val"), list | tuple):
        return [list(xm)] + [None] * (len(node.meta["val"]) - 1)
    return list(xm)


@rule(aten.layer_norm, aten.rms_norm)
def _layer_norm(b: Builder, node: fx.Node) -> Any:
    xm, shape = b.meta(node.args[0]), node.args[1]
    params = [b.param(a) for a in node.args[2:4] if isinstance(a, fx.Node)]
    if len(shape) == 1:
        b.couple([xm[-1]] + [Origin(p, 0) for p in params if p is not None])
    else:
        b.pin(*xm[-len(shape):])
    return list(xm)


@rule(aten.group_norm)
def _group_norm(b: Builder, node: fx.Node) -> Any:
    xm, groups = b.meta(node.args[0]), node.args[1]
    if groups == b.shape(node.args[0])[1]:
        params = [b.param(a) for a in node.args[2:4] if isinstance(a, fx.Node)]
        b.couple([xm[1]] + [Origin(p, 0) for p in params if p is not None])
    else:
        b.pin(xm[1])
    return list(xm)


# -- elementwise ---------------------------------------------------------------------------
_UNARY = [aten.relu, aten.relu_, aten.gelu, aten.gelu_, aten.silu, aten.silu_, aten.sigmoid,
          aten.sigmoid_, aten.tanh, aten.tanh_, aten.hardtanh, aten.hardtanh_, aten.hardswish,
          aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.leaky_relu, aten.leaky_relu_,
          aten.elu, aten.elu_, aten.mish, aten.softplus, aten.dropout, aten.dropout_,
          aten.feature_dropout, aten.alpha_dropout, aten.clone, aten.contiguous, aten.alias,
          aten.detach, aten._to_copy, aten.to, aten.neg, aten.abs, aten.exp, aten.log,
          aten.sqrt, aten.rsqrt, aten.erf, aten.square, aten.reciprocal, aten.sin, aten.cos,
          aten.clamp, aten.clamp_, aten.clamp_min, aten.clamp_max, aten.lift_fresh_copy,
          aten.relu6, aten.selu, aten.celu, aten.logit, aten.zeros_like, aten.ones_like,
          aten.full_like, aten.empty_like, aten.rand_like, aten.randn_like]


@rule(*_UNARY)
def _unary(b: Builder, node: fx.Node) -> Any:
    if any(isinstance(a, fx.Node) for a in node.args[1:]):
        return _elementwise(b, node)
    meta = b.meta(node.args[0])
    return list(meta) if isinstance(meta, list) else meta


@rule(aten.add, aten.add_, aten.sub, aten.sub_, aten.mul, aten.mul_, aten.div, aten.div_,
      aten.rsub, aten.maximum, aten.minimum, aten.where, aten.masked_fill, aten.masked_fill_,
      aten.pow, aten.eq, aten.ne, aten.gt, aten.ge, aten.lt, aten.le, aten.logical_and,
      aten.logical_or, aten.bitwise_and, aten.bitwise_or, aten.fmod, aten.remainder,
      aten.copy_, aten.copy, aten.addcmul, aten.addcdiv, aten.lerp)
def _elementwise(b: Builder, node: fx.Node) -> Any:
    out = b.shape(node)
    operands = [a for a in node.args if isinstance(a, fx.Node) and b.shape(a) is not None]
    result: list[Info] = []
    for j in range(len(out)):
        infos = []
        for arg in operands:
            shape, meta = b.shape(arg), b.meta(arg)
            k = j - (len(out) - len(shape))
            if k < 0:
                continue
            if shape[k] != out[j]:  # broadcast: a tracked size-1 dimension cannot follow
                b.pin(meta[k])
                continue
            infos.append(meta[k])
        result.append(b.couple(infos))
    return result


@rule(aten._softmax, aten.softmax, aten._log_softmax, aten.log_softmax, aten.cumsum)
def _softmax(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    b.pin(meta[_dim(node.args[1], len(meta))])
    return meta


# -- spatial -------------------------------------------------------------------------------
@rule(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d,
      aten.avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d,
      aten.adaptive_avg_pool3d, aten.adaptive_max_pool1d, aten.adaptive_max_pool2d,
      aten.max_pool2d_with_indices, aten.upsample_nearest1d, aten.upsample_nearest2d,
      aten.upsample_bilinear2d, aten.upsample_linear1d, aten.upsample_bicubic2d,
      aten._adaptive_avg_pool2d)
def _spatial(b: Builder, node: fx.Node) -> Any:
    xm = b.meta(node.args[0])
    b.pin(*xm[2:])
    meta = [xm[0], xm[1]] + [None] * (len(xm) - 2)
    if isinstance(node.meta.get("val"), list | tuple):
        return [list(meta) for _ in node.meta["val"]]
    return meta


@rule(aten.pad, aten.constant_pad_nd, aten.reflection_pad1d, aten.reflection_pad2d,
      aten.replication_pad1d, aten.replication_pad2d)
def _pad(b: Builder, node: fx.Node) -> Any:
    meta, pads = list(b.meta(node.args[0])), list(node.args[1])
    for i in range(len(pads) // 2):
        d = len(meta) - 1 - i
        if pads[2 * i] or pads[2 * i + 1]:
            b.pin(meta[d])
            meta[d] = None
    return meta


# -- reductions ----------------------------------------------------------------------------
@rule(aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.max, aten.min,
      aten.logsumexp, aten.norm, aten.linalg_vector_norm)
def _reduce(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target is aten.linalg_vector_norm.default:
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if dims is None or isinstance(dims, float) or (isinstance(dims, list | tuple) and not dims):
        b.pin(*meta)
        return b.untracked(node)
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_dim(d, len(meta)) for d in dims}
    b.pin(*(meta[d] for d in dims))
    keep = len(b.shape(node) if b.shape(node) is not None else ()) == len(meta)
    out = [None if d in dims else m for d, m in enumerate(meta) if keep or d not in dims]
    if isinstance(node.meta.get("val"), list | tuple):
        return [list(out) for _ in node.meta["val"]]
    return out


# -- matrix products -----------------------------------------------------------------------
def _batch(b: Builder, args: list[fx.Node], out_batch: tuple[int, ...]) -> list[Info]:
    """Couple broadcast batch dimensions (all but the last two) of several operands."""
    result = []
    for j in range(len(out_batch)):
        infos = []
        for arg in args:
            shape, meta = b.shape(arg)[:-2], b.meta(arg)[:-2]
            k = j - (len(out_batch) - len(shape))
            if k >= 0 and shape[k] == out_batch[j]:
                infos.append(meta[k])
            elif k >= 0:
                b.pin(meta[k])
        result.append(b.couple(infos))
    return result


def _produce(b: Builder, info: Info, size: int) -> Info:
    """A parameter dimension that ends up as an output dimension behaves like new channels."""
    if isinstance(info, Origin):
        atoms = b.fresh(size)
        b.record(info.param, info.dim, atoms)
        return atoms
    return info


@rule(aten.matmul, aten.mm, aten.bmm)
def _matmul(b: Builder, node: fx.Node) -> Any:
    a, c = node.args[0], node.args[1]
    ashape, cshape, out = b.shape(a), b.shape(c), b.shape(node)
    if len(ashape) < 2 or len(cshape) < 2:
        return unknown(b, node)
    am, cm = b.meta(a), b.meta(c)
    b.couple([am[-1], cm[-2]])
    return _batch(b, [a, c], out[:-2]) + [_produce(b, am[-2], out[-2]),
                                         _produce(b, cm[-1], out[-1])]


@rule(aten.addmm)
def _addmm(b: Builder, node: fx.Node) -> Any:
    bias, a, c = node.args[0], node.args[1], node.args[2]
    am, cm = b.meta(a), b.meta(c)
    b.couple([am[-1], cm[-2]])
    last = _produce(b, cm[-1], b.shape(node)[-1])
    bias_meta = b.meta(bias)
    b.couple([last, bias_meta[-1]] if bias_meta else [last])
    return [_produce(b, am[-2], b.shape(node)[-2]), last]


@rule(aten.scaled_dot_product_attention)
def _attention(b: Builder, node: fx.Node) -> Any:
    q, k, v = node.args[:3]
    qm, km, vm = b.meta(q), b.meta(k), b.meta(v)
    b.pin(km[-2], vm[-2])
    b.couple([qm[-1], km[-1]])
    return _batch(b, [q, k, v], b.shape(node)[:-2]) + [qm[-2], vm[-1]]


# -- shape ---------------------------------------------------------------------------------
@rule(aten.permute)
def _permute(b: Builder, node: fx.Node) -> Any:
    meta = b.meta(node.args[0])
    return [meta[_dim(d, len(meta))] for d in node.args[1]]


@rule(aten.transpose, aten.swapaxes, aten.t, aten.numpy_T)
def _transpose(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    i, j = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, len(meta) - 1)
    i, j = _dim(i, len(meta)), _dim(j, len(meta))
    meta[i], meta[j] = meta[j], meta[i]
    return meta


@rule(aten.unsqueeze)
def _unsqueeze(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    meta.insert(_dim(node.args[1], len(meta) + 1), None)
    return meta


@rule(aten.squeeze)
def _squeeze(b: Builder, node: fx.Node) -> Any:
    meta, shape = list(b.meta(node.args[0])), b.shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else [d for d, s in enumerate(shape) if s == 1]
    dims = {_dim(d, len(meta)) for d in ([dims] if isinstance(dims, int) else dims)}
    dims = {d for d in dims if shape[d] == 1}
    b.pin(*(meta[d] for d in dims))
    return [m for d, m in enumerate(meta) if d not in dims]


@rule(aten.expand, aten.broadcast_to, aten.expand_copy)
def _expand(b: Builder, node: fx.Node) -> Any:
    meta, shape, out = b.meta(node.args[0]), b.shape(node.args[0]), b.shape(node)
    lead = len(out) - len(shape)
    result: list[Info] = [None] * lead
    for i, info in enumerate(meta):
        if shape[i] == 1 and out[lead + i] != 1:
            b.pin(info)
            info = None
        result.append(info)
    return result


@rule(aten.repeat)
def _repeat(b: Builder, node: fx.Node) -> Any:
    meta, repeats = b.meta(node.args[0]), list(node.args[1])
    lead = len(repeats) - len(meta)
    result: list[Info] = [None] * lead
    for i, info in enumerate(meta):
        if repeats[lead + i] != 1:
            b.pin(info)
            info = None
        result.append(info)
    return result


@rule(aten.select)
def _select(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    d = _dim(node.args[1], len(meta))
    b.pin(meta[d])
    return meta[:d] + meta[d + 1:]


@rule(aten.slice)
def _slice(b: Builder, node: fx.Node) -> Any:
    meta, shape = list(b.meta(node.args[0])), b.shape(node.args[0])
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(meta))
    if b.shape(node)[d] != shape[d]:
        b.pin(meta[d])
        meta[d] = None
    return meta


@rule(aten.split, aten.split_with_sizes, aten.chunk, aten.tensor_split, aten.unsafe_split)
def _split(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    d = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    d = _dim(d, len(meta))
    pieces, start = [], 0
    for val in node.meta["val"]:
        size = int(val.shape[d])
        piece = list(meta)
        if _tracked(meta[d]):
            piece[d] = meta[d][start:start + size]
        elif isinstance(meta[d], Origin):
            piece[d] = None
        pieces.append(piece)
        start += size
    return pieces


@rule(aten.unbind)
def _unbind(b: Builder, node: fx.Node) -> Any:
    meta = list(b.meta(node.args[0]))
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(meta))
    b.pin(meta[d])
    return [meta[:d] + meta[d + 1:] for _ in node.meta["val"]]


@rule(aten.cat, aten.concat, aten.concatenate)
def _cat(b: Builder, node: fx.Node) -> Any:
    parts = [a for a in node.args[0] if b.shape(a) is not None and b.shape(a) != (0,)]
    out = b.shape(node)
    d = _dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), len(out))
    metas = [b.meta(a) for a in parts]
    result: list[Info] = []
    for j in range(len(out)):
        if j != d:
            result.append(b.couple([m[j] for m in metas]))
        elif all(_tracked(m[d]) for m in metas):
            result.append(np.concatenate([m[d] for m in metas]))
        else:
            b.pin(*(m[d] for m in metas))
            result.append(None)
    return result


@rule(aten.stack)
def _stack(b: Builder, node: fx.Node) -> Any:
    metas = [b.meta(a) for a in node.args[0]]
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(metas[0]) + 1)
    coupled = [b.couple([m[j] for m in metas]) for j in range(len(metas[0]))]
    return coupled[:d] + [None] + coupled[d:]


@rule(aten.flatten)
def _flatten(b: Builder, node: fx.Node) -> Any:
    return reshape(b, node, None)


@rule(aten.view, aten.reshape, aten._unsafe_view, aten.view_copy)
def _view(b: Builder, node: fx.Node) -> Any:
    return reshape(b, node, list(node.args[1]))


@rule(aten.unflatten)
def _unflatten(b: Builder, node: fx.Node) -> Any:
    in_rank = len(b.shape(node.args[0]))
    d, sizes = _dim(node.args[1], in_rank), list(node.args[2])
    literal = [-1] * d + sizes + [-1] * (in_rank - d - 1)
    return reshape(b, node, literal)


def reshape(b: Builder, node: fx.Node, literal: list[Any] | None) -> Any:
    """Follow atoms through a reshape: merged dimensions repeat their atoms; a split tracked
    dimension keeps following channels only in whole blocks of its first factor (e.g. heads).
    An output size written as a literal number (not -1) in the model code cannot change, so
    channels landing in it are pinned."""
    meta, in_shape, out_shape = b.meta(node.args[0]), b.shape(node.args[0]), b.shape(node)
    for d, size in enumerate(in_shape):
        if size == 1:
            b.pin(meta[d])
    result: list[Info] = [None] * len(out_shape)
    for ins, outs in _dim_groups(in_shape, out_shape):
        if len(ins) == 1 and len(outs) == 1:
            result[outs[0]] = meta[ins[0]]
            continue
        tracked = [d for d in ins if _tracked(meta[d])]
        if len(tracked) > 1:
            b.pin(*(meta[d] for d in tracked))
        if len(tracked) != 1:
            continue
        sizes = [in_shape[d] for d in ins]
        axis = [1] * len(ins)
        axis[ins.index(tracked[0])] = -1
        grid = np.broadcast_to(meta[tracked[0]].reshape(axis), sizes).reshape(
            [out_shape[d] for d in outs])
        position, atoms = _separate(b, grid)
        result[outs[position]] = atoms
    if literal is not None:
        for j, info in enumerate(result):
            if _tracked(info) and j < len(literal) and literal[j] != -1:
                b.pin(info)
    return result


def _separate(b: Builder, grid: np.ndarray) -> tuple[int, np.ndarray]:
    """The one axis the atoms vary along, or (tying each block) the first axis."""
    for axis in range(grid.ndim):
        if grid.shape[axis] == 1:
            continue
        index = [0] * grid.ndim
        index[axis] = slice(None)
        along = grid[tuple(index)]
        shape = [1] * grid.ndim
        shape[axis] = -1
        if np.array_equal(np.broadcast_to(along.reshape(shape), grid.shape), grid):
            return axis, along.copy()
    axis = next(a for a in range(grid.ndim) if grid.shape[a] > 1)
    blocks = np.moveaxis(grid, axis, 0).reshape(grid.shape[axis], -1)
    for block in blocks:
        b.union(np.full(block.size, block[0]), block)
    b.heads.extend(blocks.reshape(-1).tolist())
    return axis, blocks[:, 0].copy()


def _dim_groups(a: tuple[int, ...], c: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dimensions (size-1 dimensions skipped) whose products match."""
    ins = [d for d, s in enumerate(a) if s != 1]
    outs = [d for d, s in enumerate(c) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        gi, gj = [ins[i]], [outs[j]]
        pa, pc = a[ins[i]], c[outs[j]]
        i, j = i + 1, j + 1
        while pa != pc:
            if pa < pc and i < len(ins):
                gi.append(ins[i])
                pa, i = pa * a[ins[i]], i + 1
            elif pc < pa and j < len(outs):
                gj.append(outs[j])
                pc, j = pc * c[outs[j]], j + 1
            else:
                break
        groups.append((gi, gj))
    return groups


@rule(operator.getitem)
def _getitem(b: Builder, node: fx.Node) -> Any:
    meta = b.meta(node.args[0])
    if isinstance(meta, list) and isinstance(node.args[1], int) and node.args[1] < len(meta):
        item = meta[node.args[1]]
        return list(item) if isinstance(item, list) else b.untracked(node)
    b.pin_meta(meta)
    return b.untracked(node)


_IGNORED = [aten.sym_size, aten._assert_tensor_metadata, aten._assert_async, aten.sym_numel,
            aten.sym_stride, aten.scalar_tensor, aten.arange, aten.full, aten.zeros, aten.ones,
            aten.empty]


@rule(*_IGNORED)
def _no_channels(b: Builder, node: fx.Node) -> Any:
    """Ops whose result does not carry channels (shapes, asserts, new constants)."""
    return b.untracked(node)

