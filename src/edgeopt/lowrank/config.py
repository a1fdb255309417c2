"""Low-rank factorization config: which decomposition, and how each layer's rank is chosen."""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar

from edgeopt.config import Config
from edgeopt.errors import ConfigError, invalid


class Method(str, enum.Enum):
    SVD = "svd"  # truncated SVD: Linear -> 2 Linear; conv -> kxk conv (r filters) + 1x1
    TUCKER = "tucker"  # Tucker-2 on the channel modes: 1x1 -> kxk core -> 1x1 (Linear: SVD)
    CP = "cp"  # CP: 1x1 -> one depthwise conv per kernel dim -> 1x1 (Linear: SVD)


class Selection(str, enum.Enum):
    ENERGY = "energy"  # smallest rank keeping `energy` of the squared weight norm
    RANK = "rank"  # the same fixed `rank` everywhere
    BUDGET = "budget"  # each layer keeps at most `param_budget` of its parameters
    SENSITIVITY = "sensitivity"  # per layer, the smallest rank whose accuracy drop <= max_drop


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowRankConfig(Config):
    """Replace Linear / Conv layers by products of smaller layers where that saves work.

    `selection=None` infers the rule: "rank" when `rank` is set, "budget" when `param_budget`
    is set, else "energy". Energy kept is 1 - ||W - W_r||^2 / ||W||^2 (for SVD: the share of
    squared singular values kept). A layer is replaced only if its factorization has fewer
    parameters AND fewer MACs than the original. "sensitivity" needs labeled `data`: each layer
    is factorized alone at the ranks of energies `sensitivity_energies` and the smallest rank
    losing at most `max_accuracy_drop` (a fraction: 0.01 is one point) on
    `sensitivity_samples` samples is kept. `finetune_epochs > 0` trains the factorized model on
    `data` afterwards. `layers` / `exclude` are fnmatch patterns on module names.
    """

    kind: ClassVar[str] = "lowrank"

    method: Method = Method.SVD
    selection: Selection | None = None
    energy: float = 0.9
    rank: int | None = None
    param_budget: float | None = None
    max_accuracy_drop: float = 0.01
    sensitivity_energies: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    sensitivity_samples: int = 512
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    cp_iterations: int = 100
    seed: int = 0

    @property
    def rank_selection(self) -> Selection:
        if self.selection is not None:
            return self.selection
        if self.rank is not None:
            return Selection.RANK
        return Selection.BUDGET if self.param_budget is not None else Selection.ENERGY

    def validate(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise invalid("LowRankConfig.energy", "a float in (0, 1]", self.energy)
        if self.rank is not None and self.rank < 1:
            raise invalid("LowRankConfig.rank", "an int >= 1 or None", self.rank)
        if self.param_budget is not None and not 0.0 < self.param_budget < 1.0:
            raise invalid("LowRankConfig.param_budget", "a float in (0, 1) or None",
                          self.param_budget)
        if self.rank is not None and self.param_budget is not None:
            raise ConfigError("LowRankConfig.rank and LowRankConfig.param_budget are two ways of "
                              "choosing ranks; set only one.")
        needed = {Selection.RANK: ("rank", self.rank),
                  Selection.BUDGET: ("param_budget", self.param_budget)}
        field, value = needed.get(self.rank_selection, ("", 0))
        if value is None:
            raise ConfigError(f"LowRankConfig(selection={self.rank_selection.value!r}) needs "
                              f"LowRankConfig.{field}; got None.")
        self._validate_numbers()

    def _validate_numbers(self) -> None:
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise invalid("LowRankConfig.max_accuracy_drop", "a float in [0, 1]",
                          self.max_accuracy_drop)
        energies = self.sensitivity_energies
        if not energies or not all(isinstance(e, int | float) and 0 < e <= 1 for e in energies):
            raise invalid("LowRankConfig.sensitivity_energies",
                          "a non-empty tuple of floats in (0, 1]", energies)
        object.__setattr__(self, "sensitivity_energies", tuple(sorted(map(float, energies))))
        for name in ("sensitivity_samples", "batch_size", "cp_iterations"):
            if getattr(self, name) < 1:
                raise invalid(f"LowRankConfig.{name}", "an int >= 1", getattr(self, name))
        if self.finetune_epochs < 0:
            raise invalid("LowRankConfig.finetune_epochs", "an int >= 0", self.finetune_epochs)
        if not self.lr > 0:
            raise invalid("LowRankConfig.lr", "a float > 0", self.lr)
