"""Pruning: unstructured, N:M, channel / head and layer pruning, with criteria and schedules.

    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.5, structure="channel"), data=train)

See `apply` (the handler), `graph` (the dependency graph), `importance` (criteria),
`schedules`, `storage` (compact sparse size), `sensitivity` and `lottery`.
"""

from __future__ import annotations

from edgeopt.pruning.config import (
    AdvancedPrune,
    Criterion,
    PruneConfig,
    Regularization,
    Rewind,
    Schedule,
    Scope,
    Structure,
)

__all__ = [
    "AdvancedPrune",
    "Criterion",
    "PruneConfig",
    "Regularization",
    "Rewind",
    "Schedule",
    "Scope",
    "Structure",
    "build_graph",
    "load_sparse",
    "lottery_ticket",
    "prune",
    "save_sparse",
    "sensitivity_analysis",
    "sparse_size_bytes",
]

_LAZY = {
    "prune": "edgeopt.pruning.apply",
    "build_graph": "edgeopt.pruning.graph",
    "sparse_size_bytes": "edgeopt.pruning.storage",
    "save_sparse": "edgeopt.pruning.storage",
    "load_sparse": "edgeopt.pruning.storage",
    "sensitivity_analysis": "edgeopt.pruning.sensitivity",
    "lottery_ticket": "edgeopt.pruning.lottery",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeopt.pruning' has no attribute {name!r}")
