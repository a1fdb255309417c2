"""Sparsity-inducing penalties, added to the training loss before pruning.

L1 pushes single weights to zero (unstructured pruning then removes little that matters);
group lasso pushes whole channels, i.e. every coupled slice of a dependency-graph channel, to
zero together (structured pruning then removes channels that are already nearly silent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeopt.pruning.common import loss_fn
from edgeopt.pruning.graph import DependencyGraph
from edgeopt.training import LossFn


def l1_penalty(weights: dict[str, nn.Parameter]) -> torch.Tensor:
    """Sum of |w| over `weights` (differentiable)."""
    return sum((w.abs().sum() for w in weights.values()), torch.zeros(()))


def group_lasso_penalty(params: dict[str, nn.Parameter], graph: DependencyGraph) -> torch.Tensor:
    """Sum over channels of the L2 norm of all their parameter slices (differentiable)."""
    squares = torch.zeros(graph.num_channels, dtype=torch.float32)
    for (name, dim), ids in graph.uses.items():
        param = params.get(name)
        if param is None:
            continue
        per_index = param.pow(2).movedim(dim, 0).reshape(param.shape[dim], -1).sum(dim=1)
        squares = squares.index_add(0, torch.from_numpy(ids), per_index.float())
    return (squares + 1e-12).sqrt().sum()


def penalized(penalty: Callable[[], torch.Tensor], strength: float) -> LossFn:
    """The pruning loss (cross-entropy on logits) plus `strength` * penalty()."""
    def loss(output: Any, targets: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
        return loss_fn(output, targets, inputs) + strength * penalty()

    return loss
