"""Knowledge-distillation config: soft targets, label loss, feature hints, training schedule."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

from edgeopt.config import Config
from edgeopt.errors import ConfigError, ConfigTypeError, invalid


class LogitLoss(str, enum.Enum):
    KL = "kl"  # KL(teacher_T || student_T) * T^2 on temperature-softened distributions (Hinton)
    MSE = "mse"  # mean squared error between raw logits (Ba & Caruana)


class Mode(str, enum.Enum):
    OFFLINE = "offline"  # a frozen, pre-trained teacher
    ONLINE = "online"  # teacher and student trained together (deep mutual learning)
    SELF = "self"  # the student's own snapshot from the previous epoch is its teacher


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(Config):
    """Train a student to match a teacher.

    loss = alpha * soft + (1 - alpha) * cross_entropy(student, labels) + feature_weight * hints

    `soft` is KL(softmax(t/T) || softmax(s/T)) * T^2 (`logit_loss="kl"`) or the MSE between the
    logits (`"mse"`). Unlabeled batches use the soft term alone. `features` pairs intermediate
    layers: a name means the same layer name in student and teacher, "student_layer:teacher_layer"
    (or a [student, teacher] pair) names both; a learned 1x1 / linear projection maps the
    student's width onto the teacher's where they differ and is dropped after training.
    `val_fraction` of a map-style Dataset (or of a list of batches) is held out to pick the best
    epoch and to record validation accuracy; 0 trains on everything and keeps the last epoch.
    In `mode="self"` any teacher passed is not used: the student's previous-epoch snapshot is;
    `exits` (self mode only) names intermediate layers that get a temporary classifier head
    (pool + linear), trained on the labels and on the final output's soft targets: the deeper
    part of the network teaches the shallower (Zhang et al. 2019, "Be your own teacher"). The
    heads are dropped after training.
    """

    kind: ClassVar[str] = "distill"
    needs_teacher: ClassVar[bool] = True

    temperature: float = 4.0
    alpha: float = 0.7
    logit_loss: LogitLoss = LogitLoss.KL
    mode: Mode = Mode.OFFLINE
    features: tuple[Any, ...] = ()
    feature_weight: float = 1.0
    exits: tuple[str, ...] = ()
    epochs: int = 5
    # Adam; 3e-3 measured best for short runs (LeNet-300 student of ResNet-8, mnist5k, 3 epochs:
    # 0.93 test accuracy vs 0.90 at 1e-3)
    lr: float = 3e-3
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if not self.temperature > 0:
            raise invalid("DistillConfig.temperature", "a float > 0", self.temperature)
        if not 0.0 <= self.alpha <= 1.0:
            raise invalid("DistillConfig.alpha", "a float in [0, 1]", self.alpha)
        if not self.feature_weight >= 0:
            raise invalid("DistillConfig.feature_weight", "a float >= 0", self.feature_weight)
        if self.epochs < 1:
            raise invalid("DistillConfig.epochs", "an int >= 1", self.epochs)
        if not self.lr > 0:
            raise invalid("DistillConfig.lr", "a float > 0", self.lr)
        if self.batch_size < 1:
            raise invalid("DistillConfig.batch_size", "an int >= 1", self.batch_size)
        if not 0.0 <= self.val_fraction < 1.0:
            raise invalid("DistillConfig.val_fraction", "a float in [0, 1)", self.val_fraction)
        object.__setattr__(self, "features", tuple(_pair(f) for f in self.features))
        if self.exits and self.mode is not Mode.SELF:
            raise ConfigError(f"DistillConfig.exits are used by mode='self' only; got "
                              f"mode={self.mode.value!r} with exits={list(self.exits)}.")
        if not all(isinstance(e, str) and e for e in self.exits):
            raise invalid("DistillConfig.exits", "a list of layer names", self.exits)

    @property
    def feature_pairs(self) -> tuple[tuple[str, str], ...]:
        """(student layer, teacher layer) for each feature hint."""
        return self.features  # normalized by validate()


def _pair(item: Any) -> tuple[str, str]:
    """'a' -> (a, a); 'a:b' -> (a, b); [a, b] -> (a, b)."""
    if isinstance(item, str):
        parts = item.split(":")
        if len(parts) == 1 and parts[0]:
            return parts[0], parts[0]
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
        raise invalid("DistillConfig.features[]", "'layer' or 'student_layer:teacher_layer'", item)
    if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(s, str) and s
                                                                  for s in item):
        return item[0], item[1]
    if isinstance(item, list | tuple):
        raise ConfigError(
            f"DistillConfig.features entries must be a layer name or a (student_layer, "
            f"teacher_layer) pair of names; got {item!r}."
        )
    raise ConfigTypeError(
        f"DistillConfig.features entries must be str or a pair of str; got {type(item).__name__}."
    )
