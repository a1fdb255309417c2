"""Helpers shared by the pruning modules: prunable layers, losses, labeled batches."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.data import iter_batches
from edgeopt.errors import DataError
from edgeopt.training import logits_of

# Layer types whose weights unstructured / N:M pruning zeroes: type -> parameter names.
# Extend this table to prune more layer types.
PRUNABLE: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("weight",),
    nn.Conv1d: ("weight",),
    nn.Conv2d: ("weight",),
    nn.Conv3d: ("weight",),
    nn.ConvTranspose1d: ("weight",),
    nn.ConvTranspose2d: ("weight",),
}


def excluded(name: str, patterns: tuple[str, ...]) -> bool:
    """True when the module `name` (or one of its parents) matches an exclude pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns)


def prunable_weights(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """{'<module>.weight': parameter} for every prunable layer not excluded, in module order."""
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        names = _table_entry(type(module))
        if names is None or excluded(name, exclude):
            continue
        for attr in names:
            param = getattr(module, attr, None)
            if isinstance(param, nn.Parameter):
                out[f"{name}.{attr}" if name else attr] = param
    return out


def _table_entry(kind: type) -> tuple[str, ...] | None:
    for base in kind.__mro__:
        if base in PRUNABLE:
            return PRUNABLE[base]
    return None


def output_shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(output)
            if isinstance(t, torch.Tensor)]


def loss_fn(output: Any, targets: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the model's logits (works for plain and transformers-style outputs)."""
    if targets is None:
        raise DataError("pruning needs labeled data here; give (inputs, targets) batches.")
    logits = logits_of(output)
    if logits.dim() > 2:  # e.g. token classification: (batch, seq, classes)
        logits = logits.flatten(0, -2)
        targets = targets.flatten()
    return F.cross_entropy(logits, targets)


def labeled_batches(data: Any, limit: int, batch_size: int, what: str) -> Iterator[Any]:
    """Up to `limit` (inputs, targets) batches; targets are required."""
    for index, (inputs, targets) in enumerate(iter_batches(data, batch_size=batch_size, what=what)):
        if index >= limit:
            return
        if targets is None:
            raise DataError(f"{what} has no targets; give (inputs, targets) batches.")
        yield inputs, targets


def example_batch(data: Any) -> torch.Tensor:
    """Up to two samples of the first batch: what the model is traced with."""
    for inputs, _ in iter_batches(data, what="data"):
        if inputs.numel():
            return inputs[:2]
    raise DataError("data is empty; give at least one batch of inputs.")
