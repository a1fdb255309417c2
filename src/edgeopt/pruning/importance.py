"""Importance criteria: pure functions from weights (and what data told us) to scores.

Every criterion has the same small protocol, `Criterion(weight, signals, generator) -> scores`,
scores having the weight's shape (higher = more important). Channel groups reduce these scores
with `position_scores` (an L1 or L2 norm over each slice). The table `CRITERIA` maps the names
in PruneConfig.criterion to these functions, and `NEEDS` says what each reads from data
(`signals.gather` collects it); a user can add entries to both.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from edgeopt.errors import DataError
from edgeopt.pruning.config import Criterion as CriterionName


@dataclasses.dataclass
class Signals:
    """Data-derived statistics for one weight tensor (any may be None when not collected)."""

    grad_sum: torch.Tensor | None = None  # sum of dL/dw over batches (or training steps)
    grad_abs_sum: torch.Tensor | None = None  # sum of |dL/dw| over batches
    batches: int = 0
    input_norm: torch.Tensor | None = None  # L2 norm of the layer input per input channel
    movement: torch.Tensor | None = None  # accumulated -w * dL/dw during fine-tuning


class Criterion(Protocol):
    def __call__(
        self, weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
    ) -> torch.Tensor: ...


def _need(signals: Signals | None, field: str, criterion: str) -> torch.Tensor:
    value = getattr(signals, field, None) if signals is not None else None
    if value is None:
        raise DataError(f"criterion={criterion!r} needs data to compute {field.replace('_', ' ')};"
                        " pass data=... (labeled batches).")
    return value


@torch.no_grad()
def magnitude(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
              ) -> torch.Tensor:
    """|w| (channel groups: L2 norm, see NORM_POWER)."""
    return weight.detach().abs()


@torch.no_grad()
def gradient(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
             ) -> torch.Tensor:
    """Mean |dL/dw| over the batches seen."""
    total = _need(signals, "grad_abs_sum", "gradient")
    return total / max(1, signals.batches)  # type: ignore[union-attr]


@torch.no_grad()
def taylor(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
           ) -> torch.Tensor:
    """First-order Taylor estimate of the loss change when w is zeroed: mean |w * dL/dw|."""
    total = _need(signals, "grad_abs_sum", "taylor")
    return weight.detach().abs() * total / max(1, signals.batches)  # type: ignore[union-attr]


@torch.no_grad()
def activation(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
               ) -> torch.Tensor:
    """|w| times the L2 norm of the input channel it multiplies (Wanda-style)."""
    norm = _need(signals, "input_norm", "activation")
    shape = [1] * weight.dim()
    shape[1] = -1
    return weight.detach().abs() * norm.reshape(shape)


@torch.no_grad()
def random(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
           ) -> torch.Tensor:
    """Uniform random scores: the baseline every other criterion should beat."""
    return torch.rand(weight.shape, generator=generator)


@torch.no_grad()
def movement(weight: torch.Tensor, signals: Signals | None, generator: torch.Generator
             ) -> torch.Tensor:
    """-w * sum dL/dw: positive when descent moves w away from zero (Sanh et al. 2020)."""
    if signals is not None and signals.movement is not None:
        return signals.movement
    total = _need(signals, "grad_sum", "movement")
    return -weight.detach() * total


CRITERIA: dict[str, Criterion] = {
    CriterionName.MAGNITUDE.value: magnitude,
    CriterionName.L1.value: magnitude,
    CriterionName.GRADIENT.value: gradient,
    CriterionName.TAYLOR.value: taylor,
    CriterionName.ACTIVATION.value: activation,
    CriterionName.RANDOM.value: random,
    CriterionName.MOVEMENT.value: movement,
    CriterionName.SENSITIVITY.value: magnitude,  # within a layer; the plan sets its sparsity
}

# What a criterion reads from data before scoring (absent: nothing). "gradients" and
# "input_norms" are gathered per weight by signals.gather; "activations" (channel statistics)
# and "loss" (the accuracy change when a layer is removed) are measured by structure-specific
# scorers in structured.py and layers.py.
NEEDS: dict[str, str] = {
    CriterionName.GRADIENT.value: "gradients",
    CriterionName.TAYLOR.value: "gradients",
    CriterionName.MOVEMENT.value: "gradients",
    CriterionName.ACTIVATION.value: "input_norms",
    CriterionName.SENSITIVITY.value: "loss",
}
LABELED_NEEDS = {"gradients", "loss"}  # these need targets, not only inputs

# Power of the slice norm used for channel groups (2: L2 norm; 1: sum of scores).
NORM_POWER: dict[str, int] = {CriterionName.MAGNITUDE.value: 2,
                              CriterionName.SENSITIVITY.value: 2}


@torch.no_grad()
def position_scores(scores: torch.Tensor, dim: int, power: int = 1) -> torch.Tensor:
    """Sum of scores**power over every slice along `dim`: one value per index of `dim`."""
    moved = scores.movedim(dim, 0).reshape(scores.shape[dim], -1).to(torch.float64)
    if power == 1:
        return moved.sum(dim=1)
    return moved.pow(power).sum(dim=1)


@torch.no_grad()
def nm_scores(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Scores laid out as rows of `m` consecutive input weights: (-1, m).

    Linear (out, in) groups along `in`; conv (out, in, *k) groups along `in` at each kernel
    position (the layout sparse tensor cores use)."""
    moved = scores.movedim(1, -1) if scores.dim() > 2 else scores
    return moved.reshape(-1, m)


@torch.no_grad()
def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest of every `m` consecutive input weights; bool mask like `scores`."""
    rows = nm_scores(scores, m)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep.scatter_(1, rows.topk(n, dim=1).indices, True)
    if scores.dim() > 2:
        shape = scores.movedim(1, -1).shape
        return keep.reshape(shape).movedim(-1, 1)
    return keep.reshape(scores.shape)


@torch.no_grad()
def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask keeping the `keep` highest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        mask[flat.topk(min(keep, flat.numel())).indices] = True
    return mask.reshape(scores.shape)


@torch.no_grad()
def layer_masks(scores: dict[str, torch.Tensor], sparsity: dict[str, float]
                ) -> dict[str, torch.Tensor]:
    """Each tensor pruned to its own sparsity; at least one weight survives in every tensor."""
    out = {}
    for name, score in scores.items():
        keep = max(1, round(score.numel() * (1.0 - sparsity[name])))
        out[name] = topk_mask(score, keep)
    return out


@torch.no_grad()
def global_masks(scores: dict[str, torch.Tensor], sparsity: float, max_sparsity: float
                 ) -> dict[str, torch.Tensor]:
    """One threshold over all tensors; no tensor loses more than `max_sparsity` (and >= 1 stays)."""
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores.values()])
    remove = int(flat.numel() * sparsity)
    if remove == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = flat.kthvalue(remove).values
    out = {}
    for name, score in scores.items():
        below = int((score.to(torch.float64) <= threshold).sum())
        cap = min(int(score.numel() * max_sparsity), score.numel() - 1)
        out[name] = topk_mask(score, score.numel() - min(below, cap))
    return out
