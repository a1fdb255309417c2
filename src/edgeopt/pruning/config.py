"""Pruning configs: what to remove (structure), ranked how (criterion, scope), when (schedule)."""

from __future__ import annotations

import dataclasses
import enum

from edgeopt.config import Config
from edgeopt.errors import ConfigError, ConfigTypeError, invalid


class Structure(str, enum.Enum):
    UNSTRUCTURED = "unstructured"  # single weights (zeros baked into the dense tensors)
    NM = "n:m"  # n of every m consecutive input weights kept (e.g. 2:4)
    CHANNEL = "channel"  # conv channels / linear neurons / attention heads, physically removed
    NEURON = "neuron"  # alias of "channel" (the word used for Linear layers)
    HEAD = "head"  # attention heads only
    LAYER = "layer"  # whole residual blocks replaced by their skip path


class Criterion(str, enum.Enum):
    MAGNITUDE = "magnitude"  # |w| per weight; L2 norm of a channel group
    L1 = "l1"  # |w| per weight; L1 norm of a channel group
    GRADIENT = "gradient"  # mean |dL/dw| over data
    TAYLOR = "taylor"  # first-order Taylor: |w| * mean |dL/dw|
    ACTIVATION = "activation"  # |w| * input activation norm per weight; mean activation per channel
    RANDOM = "random"  # baseline
    MOVEMENT = "movement"  # -w * accumulated dL/dw (weights moving towards zero score low)
    SENSITIVITY = "sensitivity"  # per-layer sparsity from measured accuracy curves, then magnitude


class Scope(str, enum.Enum):
    GLOBAL = "global"  # one ranking over all layers (channel scores normalized per group)
    LAYER = "layer"  # every layer / group pruned to the same fraction


class Schedule(str, enum.Enum):
    ONE_SHOT = "one_shot"
    ITERATIVE = "iterative"  # `steps` rounds of prune -> fine-tune, same fraction of the rest each
    POLYNOMIAL = "polynomial"  # cubic sparsity ramp during fine-tuning (Zhu & Gupta 2017)


class Regularization(str, enum.Enum):
    NONE = "none"
    L1 = "l1"  # sum |w| of prunable weights
    GROUP_LASSO = "group_lasso"  # sum over channel groups of the L2 norm of all coupled slices


class Rewind(str, enum.Enum):
    NONE = "none"
    INIT = "init"  # lottery ticket: surviving weights go back to the model's starting weights
    EARLY = "early"  # ... to the weights after `advanced.rewind_steps` training steps


class ActivationStat(str, enum.Enum):
    MEAN_ABS = "mean_abs"  # mean |activation| per channel
    APOZ = "apoz"  # 1 - average percentage of zeros per channel


CHANNEL_STRUCTURES = {Structure.CHANNEL, Structure.NEURON, Structure.HEAD}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvancedPrune(Config):
    """Rarely changed knobs of PruneConfig."""

    importance_batches: int = 8  # batches of `data` read by data-driven criteria
    batch_size: int = 64  # when `data` is a Dataset
    max_layer_sparsity: float = 0.95  # global scope: no layer / group loses more than this
    # Channel counts kept as multiples of this (attention heads excepted). ONNX Runtime's CPU
    # convolutions run ~3x slower at widths that are not multiples of 4 (measured: DS-CNN).
    round_to: int = 4
    val_fraction: float = 0.1  # of `data`, held out for early stopping and the accuracy trend
    patience: int = 3  # fine-tuning stops after this many epochs without val improvement
    polynomial_end: float = 0.75  # fraction of fine-tuning over which the cubic ramp runs
    prune_every: int = 20  # polynomial: optimizer steps between mask updates
    rewind_steps: int = 50  # rewind='early': weights saved after this many optimizer steps
    activation_stat: ActivationStat = ActivationStat.MEAN_ABS
    bn_batches: int = 8  # batches of `data` re-estimating batch-norm statistics after each
    # pruning step (0: keep the old statistics)
    sensitivity_levels: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    sensitivity_batches: int = 4  # val batches per accuracy point of a sensitivity curve
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        for name in ("importance_batches", "batch_size", "round_to", "patience", "prune_every",
                     "rewind_steps", "sensitivity_batches"):
            value = getattr(self, name)
            if value < 1:
                raise invalid(f"AdvancedPrune.{name}", "an int >= 1", value)
        if self.bn_batches < 0:
            raise invalid("AdvancedPrune.bn_batches", "an int >= 0", self.bn_batches)
        if not 0.0 < self.max_layer_sparsity < 1.0:
            raise invalid("AdvancedPrune.max_layer_sparsity", "a float in (0, 1)",
                          self.max_layer_sparsity)
        if not 0.0 <= self.val_fraction < 1.0:
            raise invalid("AdvancedPrune.val_fraction", "a float in [0, 1)", self.val_fraction)
        if not 0.0 < self.polynomial_end <= 1.0:
            raise invalid("AdvancedPrune.polynomial_end", "a float in (0, 1]", self.polynomial_end)
        levels = tuple(self.sensitivity_levels)
        if not levels or not all(isinstance(v, int | float) and 0 < v < 1 for v in levels):
            raise invalid("AdvancedPrune.sensitivity_levels", "a non-empty list of floats in (0, 1)",
                          self.sensitivity_levels)
        object.__setattr__(self, "sensitivity_levels", tuple(sorted(float(v) for v in levels)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneConfig(Config):
    """Prune a model. `sparsity` is the fraction removed: of weights (unstructured), of channels
    or heads (channel / head, per layer or overall by `scope`), or of residual blocks (layer).

    For structure='n:m' the pattern fixes the sparsity: `sparsity` must equal 1 - n/m.
    Fine-tuning (finetune_epochs > 0) holds out `advanced.val_fraction` of `data` for early
    stopping, unless `edgeopt.pruning.prune(..., val_data=...)` is given a validation set.
    """

    kind = "prune"

    sparsity: float = 0.5
    structure: Structure = Structure.UNSTRUCTURED
    criterion: Criterion = Criterion.MAGNITUDE
    scope: Scope = Scope.LAYER
    schedule: Schedule = Schedule.ONE_SHOT
    finetune_epochs: int = 0  # per round for 'iterative'; in total for 'polynomial'
    steps: int = 3  # rounds (iterative) or ramp points (polynomial)
    n: int = 2
    m: int = 4
    # fine-tuning learning rate (Adam). 2e-3 measured best for short recovery: 50 % channel
    # pruning (l1) + 2 epochs on mnist5k keeps 0.957 (resnet8) and 0.950 (dscnn) vs 0.910 /
    # 0.947 at 5e-4; distillation from the unpruned model did not help further.
    lr: float = 2e-3
    exclude: tuple[str, ...] = ()  # fnmatch patterns of modules left as they are (dense, and
    # for channel pruning with every channel they read or write)
    regularization: Regularization = Regularization.NONE
    reg_strength: float = 1e-4
    reg_epochs: int = 0  # epochs of penalized training before pruning
    rewind: Rewind = Rewind.NONE
    # per-layer sparsity instead of one `sparsity` for all (layers not named stay whole): keyed
    # by the weight name for weight structures ("fc1.weight"), by the producing layer for
    # channels ("conv1"); a search or a sensitivity study chooses it
    layer_sparsity: dict[str, float] = dataclasses.field(default_factory=dict)
    advanced: AdvancedPrune = dataclasses.field(default_factory=AdvancedPrune)

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise invalid("PruneConfig.sparsity", "a float in [0, 1)", self.sparsity)
        for name, low in (("finetune_epochs", 0), ("steps", 1), ("n", 1), ("m", 1),
                          ("reg_epochs", 0)):
            value = getattr(self, name)
            if value < low:
                raise invalid(f"PruneConfig.{name}", f"an int >= {low}", value)
        if not self.lr > 0:
            raise invalid("PruneConfig.lr", "a float > 0", self.lr)
        if not self.reg_strength >= 0:
            raise invalid("PruneConfig.reg_strength", "a float >= 0", self.reg_strength)
        exclude = tuple(self.exclude)
        if not all(isinstance(p, str) for p in exclude):
            raise ConfigTypeError(f"PruneConfig.exclude must be a list of strings; got {exclude!r}.")
        object.__setattr__(self, "exclude", exclude)
        for name, value in self.layer_sparsity.items():
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise invalid(f"PruneConfig.layer_sparsity[{name!r}]", "a float in [0, 1)", value)
        if self.layer_sparsity and self.criterion is Criterion.SENSITIVITY:
            raise invalid("PruneConfig.criterion", "not 'sensitivity' with layer_sparsity (both "
                          "choose the per-layer sparsities)", self.criterion.value)
        self._validate_structure()
        self._validate_schedule()

    def _validate_structure(self) -> None:
        if self.structure is Structure.NM:
            if self.n > self.m:
                raise invalid("PruneConfig.n", f"an int in [1, m={self.m}] (n of every m weights "
                              "are kept)", self.n)
            if abs(self.sparsity - (1 - self.n / self.m)) > 1e-6:
                raise ConfigError(
                    f"PruneConfig.sparsity must be 1 - n/m = {1 - self.n / self.m:g} for "
                    f"structure='n:m' (n={self.n}, m={self.m}); got {self.sparsity!r}.")
            if self.scope is Scope.GLOBAL:
                raise invalid("PruneConfig.scope", "'layer' for structure='n:m' (every group of m "
                              "weights keeps n)", self.scope.value)
            if self.criterion is Criterion.SENSITIVITY:
                raise invalid("PruneConfig.criterion", "not 'sensitivity' for structure='n:m' "
                              "(the pattern fixes every layer's sparsity)", self.criterion.value)
        if self.structure is Structure.LAYER and self.regularization is Regularization.GROUP_LASSO:
            raise invalid("PruneConfig.regularization", "'none' or 'l1' for structure='layer'",
                          self.regularization.value)

    def _validate_schedule(self) -> None:
        if self.schedule is Schedule.POLYNOMIAL and self.finetune_epochs < 1:
            raise invalid("PruneConfig.finetune_epochs", "an int >= 1 for schedule='polynomial' "
                          "(sparsity grows during training)", self.finetune_epochs)
        if self.regularization is not Regularization.NONE and self.reg_epochs < 1:
            raise invalid("PruneConfig.reg_epochs", f"an int >= 1 with regularization="
                          f"{self.regularization.value!r}", self.reg_epochs)
        if self.rewind is not Rewind.NONE:
            if self.schedule is not Schedule.ITERATIVE or self.finetune_epochs < 1:
                raise ConfigError(
                    "PruneConfig.rewind needs schedule='iterative' and finetune_epochs >= 1 "
                    "(train, prune, rewind, retrain); got schedule="
                    f"{self.schedule.value!r}, finetune_epochs={self.finetune_epochs}.")
            if self.structure not in (Structure.UNSTRUCTURED, Structure.NM):
                raise invalid("PruneConfig.structure", "'unstructured' or 'n:m' with rewind "
                              "(lottery tickets are weight masks)", self.structure.value)
