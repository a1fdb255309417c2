"""The distillation training loop: one optimizer over the student, its feature projections and,
in online mode, the teacher; seeded and deterministic; a tqdm bar per run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from edgeopt import distributed
from edgeopt.checkpoint import loop
from edgeopt.data import iter_batches
from edgeopt.distillation.config import DistillConfig, Mode
from edgeopt.distillation.features import FeatureTap
from edgeopt.distillation.losses import distillation_loss, hint_loss
from edgeopt.errors import ConfigTypeError, DataError
from edgeopt.progress import bar as progress_bar
from edgeopt.training import evaluate


@dataclasses.dataclass
class Party:
    """Everything the loop trains or queries."""

    student: nn.Module
    teacher: nn.Module
    projections: nn.ModuleList  # one per feature pair
    pairs: tuple[tuple[str, str], ...]
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]]  # per-sample (student, teacher) shapes
    student_tap: FeatureTap
    teacher_tap: FeatureTap
    exits: tuple[str, ...] = ()  # self mode: student layers with a temporary classifier head
    exit_heads: nn.ModuleList = dataclasses.field(default_factory=nn.ModuleList)


@dataclasses.dataclass
class Curves:
    """Per-epoch training curves (mean over samples) and validation accuracies."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    soft_loss: list[float] = dataclasses.field(default_factory=list)
    hard_loss: list[float] = dataclasses.field(default_factory=list)
    feature_loss: list[float] = dataclasses.field(default_factory=list)
    exit_loss: list[float] = dataclasses.field(default_factory=list)
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    teacher_val_accuracy: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0


def has_labels(data: Any) -> bool:
    return next(iter_batches(data, what="val data"))[1] is not None


def train_batches(data: Any, batch_size: int, seed: int) -> Iterable[Any]:
    """Re-iterable batches; a map-style Dataset is shuffled by a seeded generator."""
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        generator = torch.Generator().manual_seed(seed)
        return distributed.shuffled_loader(data, batch_size, generator)
    if not isinstance(data, Iterable) or iter(data) is data:
        raise ConfigTypeError("distillation data must be re-iterable (a Dataset, DataLoader or "
                              f"list of batches); got {type(data).__name__}.")
    return distributed.shard_batches(data)


class _Step(nn.Module):
    """Everything trained, as one module whose forward gives the loss terms of a batch, so that
    DistributedDataParallel averages the gradients of the student, the projections, the exit
    heads and (online) the teacher together."""

    def __init__(self, party: Party, config: DistillConfig) -> None:
        super().__init__()
        self.online = config.mode is Mode.ONLINE
        self.trained = nn.ModuleList([party.student, party.projections, party.exit_heads]
                                     + ([party.teacher] if self.online else []))
        self.party, self.config = party, config

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None
                ) -> tuple[torch.Tensor, ...]:
        return _losses(self.party, self.config, inputs, targets, self.online)


def run(party: Party, config: DistillConfig, train: Any, val: Any, progress: bool) -> Curves:
    """Train `party.student` in place; keep the best-val epoch's weights when `val` is given."""
    curves = Curves()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        loader = train_batches(train, config.batch_size, config.seed)
        trained = [party.student, party.projections, party.exit_heads]
        if config.mode is Mode.ONLINE:
            trained.append(party.teacher)
        params = [p for m in trained for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=config.lr)
        modules = {"student": party.student, "projections": party.projections,
                   "exit_heads": party.exit_heads, "teacher": party.teacher}
        ckpt = loop("distill", modules, {"config": config.to_dict()})
        generator = getattr(loader, "generator", None)
        saved = ckpt.restore(modules, optimizer, generator=generator) if ckpt else None
        first, best_acc, best_state = _resumed(saved, curves)
        bar = progress_bar(total=config.epochs, desc=f"distill ({config.mode.value})",
                           unit="epoch", disable=not progress or not distributed.is_main(),
                           leave=False, initial=first)
        step = distributed.wrap(_Step(party, config))
        for epoch in range(first, config.epochs):
            _epoch(party, step, loader, optimizer, curves, epoch)
            if val is not None:
                acc = evaluate(party.student, val)
                curves.val_accuracy.append(acc)
                if config.mode is Mode.ONLINE:
                    curves.teacher_val_accuracy.append(evaluate(party.teacher, val))
                if acc >= best_acc:  # ties keep later weights, as training.fit does
                    best_acc, curves.best_epoch = acc, epoch
                    best_state = copy.deepcopy(party.student.state_dict())
            if config.mode is Mode.SELF:  # the next epoch learns from this epoch's model
                party.teacher.load_state_dict(party.student.state_dict())
            if ckpt is not None:  # resumable from here (edgeopt.checkpoint)
                ckpt.save(modules, optimizer, {"epoch": epoch + 1, "best_acc": best_acc,
                                               "curves": dataclasses.asdict(curves)},
                          generator=generator, best=best_state)
            bar.set_postfix(loss=f"{curves.train_loss[-1]:.4f}")
            bar.update(1)
        bar.close()
    if best_state is not None:
        party.student.load_state_dict(best_state)
    party.student.eval()
    curves.seconds = time.perf_counter() - start
    return curves


def _resumed(saved: dict[str, Any] | None,
             curves: Curves) -> tuple[int, float, dict[str, torch.Tensor] | None]:
    """(first epoch to run, best val accuracy, best weights) from a checkpoint, if any."""
    if saved is None:
        return 0, -1.0, None
    for key, value in saved["curves"].items():
        setattr(curves, key, value)
    return saved["epoch"], saved["best_acc"], saved["best"]


def _epoch(party: Party, step: nn.Module, loader: Iterable[Any],
           optimizer: torch.optim.Optimizer, curves: Curves, epoch: int) -> None:
    """One epoch; `step` is _Step, or its DistributedDataParallel wrapper under torchrun."""
    online = getattr(step, "module", step).online
    party.student.train()
    party.projections.train()
    party.exit_heads.train()
    party.teacher.train(online)  # a frozen teacher keeps its batch-norm statistics
    sums = torch.zeros(5, dtype=torch.float64)
    count = 0
    for inputs, targets in iter_batches(loader, what="train data"):
        optimizer.zero_grad(set_to_none=True)
        terms = step(inputs, targets)
        share = distributed.weight(len(inputs))
        (terms[0] * share if share != 1.0 else terms[0]).backward()
        optimizer.step()
        sums += torch.tensor([float(t.detach()) for t in terms], dtype=torch.float64) * len(inputs)
        count += len(inputs)
    *totals, count = distributed.sum_all([*sums.tolist(), count])
    sums = torch.tensor(totals, dtype=torch.float64)
    if count == 0:
        raise DataError(f"train data gave no batches in epoch {epoch}; it must not be empty.")
    mean = (sums / count).tolist()
    for values, value in zip((curves.train_loss, curves.soft_loss, curves.hard_loss,
                              curves.feature_loss, curves.exit_loss), mean):
        values.append(value)


def _losses(party: Party, config: DistillConfig, inputs: torch.Tensor,
            targets: torch.Tensor | None, online: bool) -> tuple[torch.Tensor, ...]:
    """(total, soft, hard, hint, exits) for one batch; the total includes the online teacher's
    loss and the self-distillation exits' losses."""
    party.student_tap.clear()
    party.teacher_tap.clear()
    student_logits = party.student(inputs)
    with torch.set_grad_enabled(online):
        teacher_logits = party.teacher(inputs)
    options = {"temperature": config.temperature, "alpha": config.alpha,
               "kind": config.logit_loss.value}
    total, soft, hard = distillation_loss(student_logits, teacher_logits, targets, **options)
    hint = torch.zeros(())
    for projection, (s_name, t_name) in zip(party.projections, party.pairs):
        s_feat = projection(party.student_tap.features[s_name])
        hint = hint + hint_loss(s_feat, party.teacher_tap.features[t_name])
    if party.pairs:
        total = total + config.feature_weight * hint
    if online:  # deep mutual learning: the teacher learns from the labels and the student too
        total = total + distillation_loss(teacher_logits, student_logits, targets, **options)[0]
    exits = torch.zeros(())
    for head, name in zip(party.exit_heads, party.exits):  # the final output teaches the exits
        exit_logits = head(party.student_tap.features[name])
        exits = exits + distillation_loss(exit_logits, student_logits, targets, **options)[0]
    return total + exits, soft, hard, hint, exits
