"""Pruning: unstructured, N:M, channel / head and layer pruning, with criteria and schedules.

    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.5, structure="channel"), data=train)

See `apply` (the handler), `graph` (the dependency graph), `importance` (criteria),
`schedules`, `sensitivity` and `lottery`; stored sizes come from `edgeopt.storage`.
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
    "lottery_ticket",
    "prune",
    "sensitivity_analysis",
]

_LAZY = {
    "prune": "edgeopt.pruning.apply",
    "build_graph": "edgeopt.pruning.graph",
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
