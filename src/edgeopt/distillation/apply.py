"""The distillation handler: check teacher and layers, build projections, train, record."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from edgeopt.data import holdout, take_inputs
from edgeopt.distillation import train as loop
from edgeopt.distillation.config import DistillConfig, Mode
from edgeopt.distillation.features import (
    FeatureTap,
    make_exit_head,
    make_projection,
    resolve_layer,
)
from edgeopt.errors import ConfigError, ConfigTypeError, DataError, ModelError
from edgeopt.registry import Applied, register
from edgeopt.training import evaluate


@dataclasses.dataclass
class DistillStats:
    """What distillation did: setup, per-epoch curves and accuracies, for the report."""

    mode: str
    logit_loss: str
    temperature: float
    alpha: float
    epochs: int
    student_params: int
    teacher_params: int
    features: list[dict[str, Any]]
    train_samples: int | None
    val_samples: int | None
    teacher_val_accuracy_before: float | None
    exits: list[str]
    curves: loop.Curves

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register(DistillConfig)
def distill(model: nn.Module, config: DistillConfig, *, data: Any = None,
            teacher: nn.Module | None = None, progress: bool = True) -> Applied:
    """Return a copy of `model` trained to match `teacher` (neither input is modified)."""
    if data is None:
        raise DataError("distillation needs training data; pass data=<train split>.")
    teacher = _check_teacher(teacher, config)
    for student_layer, teacher_layer in config.feature_pairs:  # names checked before any work
        resolve_layer(model, student_layer, "student")
        resolve_layer(teacher if teacher is not None else model, teacher_layer, "teacher")
    for name in config.exits:
        resolve_layer(model, name, "student", "exits")
    student = copy.deepcopy(model)
    teacher = copy.deepcopy(teacher if teacher is not None else model)
    train, val = holdout(data, config.val_fraction, config.seed)
    if val is not None and not loop.has_labels(val):
        train, val = data, None  # unlabeled: nothing to measure accuracy with
    probe = take_inputs(train, 2, what="train data")[0][:2]
    party = _party(student, teacher, config, probe)
    try:
        teacher_acc = evaluate(teacher, val) if val is not None else None
        curves = loop.run(party, config, train, val, progress)
    finally:
        party.student_tap.remove()
        party.teacher_tap.remove()
    stats = DistillStats(
        mode=config.mode.value, logit_loss=config.logit_loss.value,
        temperature=config.temperature, alpha=config.alpha, epochs=config.epochs,
        student_params=count_params(student), teacher_params=count_params(teacher),
        features=_feature_stats(party), train_samples=_samples(train),
        val_samples=_samples(val), teacher_val_accuracy_before=teacher_acc,
        exits=list(config.exits), curves=curves)
    return Applied(student.eval(), {"distill": stats})


def _check_teacher(teacher: Any, config: DistillConfig) -> nn.Module | None:
    if config.mode is Mode.SELF:
        return None  # the student's own snapshot teaches; a passed teacher is not used
    if teacher is None:
        raise ConfigError(f"DistillConfig(mode={config.mode.value!r}) needs a teacher; pass "
                          "teacher=<model>, or use mode='self' to distill from the student's "
                          "own snapshot.")
    if not isinstance(teacher, nn.Module):
        raise ConfigTypeError(f"teacher must be a torch.nn.Module; got {type(teacher).__name__}.")
    return teacher


def _party(student: nn.Module, teacher: nn.Module, config: DistillConfig,
           probe: torch.Tensor) -> loop.Party:
    """Check the output shapes agree, tap the feature layers and size the projections."""
    pairs = config.feature_pairs
    s_tap = FeatureTap(student, [s for s, _ in pairs] + list(config.exits), "student")
    t_tap = FeatureTap(teacher, [t for _, t in pairs], "teacher")
    try:
        s_out, t_out = _probe(student, probe, "student"), _probe(teacher, probe, "teacher")
        if s_out.shape != t_out.shape:
            raise ModelError(
                f"the teacher's output shape {tuple(t_out.shape)} differs from the student's "
                f"{tuple(s_out.shape)} (batch of {len(probe)}); both must predict the same "
                "classes in the same layout.")
        shapes = [(tuple(s_tap.features[s].shape[1:]), tuple(t_tap.features[t].shape[1:]))
                  for s, t in pairs]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            projections = nn.ModuleList(make_projection(s, t) for s, t in shapes)
            heads = nn.ModuleList(make_exit_head(tuple(s_tap.features[e].shape[1:]),
                                                 s_out.shape[1]) for e in config.exits)
    except BaseException:
        s_tap.remove()
        t_tap.remove()
        raise
    return loop.Party(student=student, teacher=teacher, projections=projections, pairs=pairs,
                      shapes=shapes, student_tap=s_tap, teacher_tap=t_tap,
                      exits=config.exits, exit_heads=heads)


@torch.no_grad()
def _probe(model: nn.Module, inputs: torch.Tensor, who: str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        out = model(inputs)
    except RuntimeError as exc:
        raise DataError(f"the {who} cannot run on the training inputs of shape "
                        f"{tuple(inputs.shape)}: {str(exc).splitlines()[0]}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the {who} returns {type(out).__name__}; distillation needs a logits "
                         "tensor.")
    return out


def _feature_stats(party: loop.Party) -> list[dict[str, Any]]:
    out = []
    for projection, (s_name, t_name), (s_shape, t_shape) in zip(
            party.projections, party.pairs, party.shapes):
        parts = list(projection) if isinstance(projection, nn.Sequential) else [projection]
        out.append({"student": s_name, "teacher": t_name, "student_shape": list(s_shape),
                    "teacher_shape": list(t_shape),
                    "projection": "+".join(type(m).__name__ for m in parts) or "Identity",
                    "projection_params": count_params(projection)})
    return out


def _samples(data: Any) -> int | None:
    """Number of samples in a Dataset or a list of batches; None when unknown."""
    if isinstance(data, list | tuple):
        return sum(len(b[0] if isinstance(b, list | tuple) else b) for b in data)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
