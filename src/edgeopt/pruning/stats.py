"""What pruning did, per layer and per round: the statistics the run report renders."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from edgeopt.pruning.common import PRUNABLE, prunable_weights
from edgeopt.storage import stored_size


def _conv_macs(m: _ConvNd, x: torch.Tensor, y: torch.Tensor) -> int:
    per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if m.transposed:
        return (x.numel() // x.shape[0]) * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return (y.numel() // y.shape[0]) * per_output


def _linear_macs(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return (y.numel() // y.shape[0]) * m.in_features


# Multiply-accumulates per sample, by layer type (extend for other layers).
MACS: dict[type[nn.Module], Callable[[Any, torch.Tensor, torch.Tensor], int]] = {
    _ConvNd: _conv_macs,
    nn.Linear: _linear_macs,
}


def _macs_fn(kind: type) -> Callable[[Any, torch.Tensor, torch.Tensor], int] | None:
    return next((MACS[b] for b in kind.__mro__ if b in MACS), None)


@torch.no_grad()
def layer_counts(model: nn.Module, example: torch.Tensor | None) -> dict[str, dict[str, Any]]:
    """Per module that owns parameters: type, weight shape, params, non-zeros and MACs/sample
    (MACs need `example`; they count Linear/Conv layers, the ops that dominate)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        weight = getattr(module, "weight", None)
        rows[name] = {
            "name": name, "type": type(module).__name__,
            "shape": list(weight.shape) if isinstance(weight, torch.Tensor) else None,
            "params": sum(p.numel() for p in own),
            "nonzero": sum(int(p.count_nonzero()) for p in own),
            "weight_nonzero": int(weight.count_nonzero()) if isinstance(weight, torch.Tensor)
            else 0,
            "macs": 0,
        }
    if example is not None:
        _count_macs(model, example, rows)
    return rows


def _count_macs(model: nn.Module, example: torch.Tensor, rows: dict[str, dict[str, Any]]) -> None:
    def hook(name: str, fn: Callable[..., int]) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                rows[name]["macs"] += fn(module, args[0], out)
        return record

    handles = []
    for name, module in model.named_modules():
        fn = _macs_fn(type(module))
        if fn is not None and name in rows:
            handles.append(module.register_forward_hook(hook(name, fn)))
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


@dataclasses.dataclass
class PruneStats:
    """Pruning statistics (`eo.apply_with_stats(...).stats['prune']`); `to_dict()` for the
    report."""

    structure: str
    criterion: str
    scope: str
    schedule: str
    target_sparsity: float
    weight_sparsity: float = 0.0  # zero fraction of prunable (Linear / Conv) weights
    params_before: int = 0
    params_after: int = 0
    nonzero_params_after: int = 0
    macs_before: int = 0  # per sample, Linear / Conv
    macs_after: int = 0  # of the (possibly smaller) dense layers
    effective_macs_after: int = 0  # skipping multiplications by zero weights
    dense_bytes_before: int = 0
    dense_bytes_after: int = 0
    sparse_bytes_before: int = 0  # stored size (edgeopt.storage)
    sparse_bytes_after: int = 0
    channels_before: int = 0  # structured: channels in the dependency graph
    channels_removed: int = 0
    pinned: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # kept, and why
    blocks_removed: list[str] = dataclasses.field(default_factory=list)
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # accuracy: on val
    skipped_layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    plan: dict[str, float] = dataclasses.field(default_factory=dict)  # criterion='sensitivity'
    sensitivity: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per unit
    sensitivity_curves: dict[str, Any] = dataclasses.field(default_factory=dict)
    regularization: dict[str, Any] = dataclasses.field(default_factory=dict)
    masks: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)  # kept fraction
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def snapshot(model: nn.Module, example: torch.Tensor | None) -> dict[str, Any]:
    """Counts taken before pruning, to compare against afterwards."""
    stored = stored_size(model)
    return {"layers": layer_counts(model, example), "dense": stored.dense_bytes,
            "sparse": stored.total_bytes,
            "params": sum(p.numel() for p in model.parameters())}


def finish_stats(stats: PruneStats, before: dict[str, Any], model: nn.Module,
                 example: torch.Tensor | None, exclude: tuple[str, ...]) -> PruneStats:
    """Fill the before/after totals and per-layer rows of `stats` from the pruned `model`."""
    after = layer_counts(model, example)
    weights = prunable_weights(model, exclude)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(w.count_nonzero()) for w in weights.values())
    stats.weight_sparsity = zeros / total if total else 0.0
    stats.params_before = before["params"]
    stats.params_after = sum(p.numel() for p in model.parameters())
    stats.nonzero_params_after = sum(int(p.count_nonzero()) for p in model.parameters())
    stats.macs_before = sum(r["macs"] for r in before["layers"].values())
    stats.macs_after = sum(r["macs"] for r in after.values())
    stats.effective_macs_after = sum(_effective(r) for r in after.values())
    stats.dense_bytes_before, stats.sparse_bytes_before = before["dense"], before["sparse"]
    stored = stored_size(model)
    stats.dense_bytes_after, stats.sparse_bytes_after = stored.dense_bytes, stored.total_bytes
    if 0 < stats.weight_sparsity and stats.structure in ("unstructured", "n:m"):
        stats.masks = {name.rpartition(".")[0]: mask_grid(w) for name, w in weights.items()}
    kinds = {t.__name__ for t in PRUNABLE}
    stats.layers = [_layer_row(name, row, after.get(name)) for name, row in before["layers"].items()
                    if row["type"] in kinds or row["macs"]]
    return stats


@torch.no_grad()
def mask_grid(weight: torch.Tensor, size: int = 64) -> list[list[float]]:
    """Kept fraction of `weight` (outputs x inputs*kernel) averaged into at most size x size."""
    kept = (weight.detach().reshape(weight.shape[0], -1) != 0).float()[None, None]
    rows, cols = min(size, kept.shape[2]), min(size, kept.shape[3])
    pooled = torch.nn.functional.adaptive_avg_pool2d(kept, (rows, cols))[0, 0]
    return [[round(float(v), 3) for v in row] for row in pooled]


def _effective(row: dict[str, Any]) -> int:
    if not row["macs"] or not row["shape"]:
        return row["macs"]
    return round(row["macs"] * row["weight_nonzero"] / math.prod(row["shape"]))


def _layer_row(name: str, before: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
    after = after or {"shape": None, "params": 0, "nonzero": 0, "macs": 0, "weight_nonzero": 0}
    size = math.prod(after["shape"]) if after["shape"] else 0
    return {
        "name": name, "type": before["type"],
        "shape_before": before["shape"], "shape_after": after["shape"],
        "params_before": before["params"], "params_after": after["params"],
        "nonzero_after": after["nonzero"],
        "sparsity": 1.0 - after["weight_nonzero"] / size if size else 1.0,
        "macs_before": before["macs"], "macs_after": after["macs"],
        "effective_macs_after": _effective(after) if after["shape"] else 0,
    }
