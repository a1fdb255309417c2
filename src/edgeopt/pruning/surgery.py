"""Module surgery: slice parameters along removed channels and make the layers agree.

Slicing is generic (the dependency graph says which dimension of which tensor); what each
layer type must update besides its tensors (in_features, groups, normalized_shape, ...) lives in
the table `FIXERS`, keyed by layer type and searched along the type's MRO.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from edgeopt.pruning.graph import DependencyGraph, Key


def _fix_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_conv(m: _ConvNd) -> None:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if m.transposed:
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
        return
    m.out_channels = m.weight.shape[0]
    if depthwise:
        m.groups = m.in_channels = m.out_channels
    else:
        m.in_channels = m.weight.shape[1] * m.groups


def _fix_norm(m: _NormBase) -> None:
    tensor = m.weight if m.weight is not None else m.running_mean
    if tensor is not None:
        m.num_features = tensor.shape[0]


def _fix_layer_norm(m: nn.LayerNorm) -> None:
    if m.weight is not None and len(m.normalized_shape) == 1:
        m.normalized_shape = (m.weight.shape[0],)


def _fix_group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None and m.num_groups == m.num_channels:
        m.num_groups = m.num_channels = m.weight.shape[0]


def _fix_embedding(m: nn.Embedding) -> None:
    m.embedding_dim = m.weight.shape[1]


FIXERS: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    nn.Linear: _fix_linear,
    _ConvNd: _fix_conv,
    _NormBase: _fix_norm,
    nn.LayerNorm: _fix_layer_norm,
    nn.GroupNorm: _fix_group_norm,
    nn.Embedding: _fix_embedding,
}

# Attribute names that count attention heads, and the names of a head's width, in the
# attention modules of common libraries (transformers: num_attention_heads / head_dim).
_HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads")
_HEAD_WIDTHS = ("head_dim", "attention_head_size", "head_size")
_QUERY_NAMES = ("q_proj", "query", "q", "q_lin")


def _fix_attention(m: nn.Module) -> None:
    """Keep head-count attributes in step with a pruned query projection (informational in
    transformers >= 5, whose attention infers the head count from the tensor shapes)."""
    width = next((getattr(m, a) for a in _HEAD_WIDTHS if isinstance(getattr(m, a, None), int)), 0)
    query = next((getattr(m, q) for q in _QUERY_NAMES if isinstance(getattr(m, q, None),
                                                                     nn.Linear)), None)
    if not width or query is None:
        return
    heads = query.out_features // width
    for attr in _HEAD_COUNTS:
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, heads)
    if isinstance(getattr(m, "all_head_size", None), int):
        m.all_head_size = heads * width


def _fixer(kind: type) -> Callable[[nn.Module], None] | None:
    for base in kind.__mro__:
        if base in FIXERS:
            return FIXERS[base]
    return None


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is_parameter) holding it (tied weights too)."""
    owners: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, attr, True))
        for attr, buf in module._buffers.items():
            if buf is not None:
                owners.setdefault(id(buf), []).append((module, attr, False))
    return owners


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return getattr(module, attr)


@torch.no_grad()
def shrink(model: nn.Module, graph: DependencyGraph, removed: set[int]) -> list[str]:
    """Remove `removed` channels from `model` in place; return the names of changed modules."""
    if not removed:
        return []
    masks = graph.keep_masks(removed)
    per_tensor: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (name, dim), keep in masks.items():
        if not keep.all():
            per_tensor.setdefault(name, []).append((dim, keep))
    owners = _owners(model)
    changed: dict[nn.Module, None] = {}
    for name, cuts in per_tensor.items():
        old = _tensor(model, name)
        new = old.detach()
        for dim, keep in cuts:
            new = new.index_select(dim, torch.from_numpy(np.flatnonzero(keep)))
        new = new.clone().contiguous()
        for module, attr, is_param in owners.get(id(old), []):
            if is_param:
                module._parameters[attr] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[attr] = new
            changed[module] = None
    for module in changed:
        fix = _fixer(type(module))
        if fix is not None:
            fix(module)
    for module in model.modules():
        _fix_attention(module)
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in changed if id(m) in names]


def channel_masks(graph: DependencyGraph, removed: set[int]) -> dict[Key, np.ndarray]:
    """Keep masks of the tensors `removed` touches (norm statistics excluded)."""
    if not removed:
        return {}
    return {k: v for k, v in graph.keep_masks(removed).items()
            if not v.all() and not k[0].endswith(("running_var", "running_mean"))}


@torch.no_grad()
def zero_channels(model: nn.Module, masks: dict[Key, np.ndarray]) -> None:
    """Zero the parameter slices of removed channels (a mask from `channel_masks`).

    Zeroed conv/linear outputs with zeroed norm scale and shift are exactly zero, so a later
    `shrink` of the same channels does not change what the model computes."""
    for (name, dim), keep in masks.items():
        tensor = _tensor(model, name)
        shape = [1] * tensor.dim()
        shape[dim] = -1
        tensor.mul_(torch.from_numpy(keep).to(tensor.dtype).reshape(shape))
