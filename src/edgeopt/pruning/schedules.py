"""When to prune: sparsity schedules (pure functions) and fine-tuning with early stopping."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from torch import nn

from edgeopt.progress import bar as progress_bar
from edgeopt.pruning.common import loss_fn
from edgeopt.training import LossFn, evaluate, fit


def round_sparsities(target: float, steps: int) -> list[float]:
    """Iterative pruning: each of `steps` rounds removes the same fraction of what is left,
    ending at `target` (e.g. 0.75 in 2 rounds: 0.5, 0.75)."""
    return [1.0 - (1.0 - target) ** (k / steps) for k in range(1, steps + 1)]


def polynomial_sparsity(target: float, progress: float, initial: float = 0.0,
                        power: int = 3) -> float:
    """Gradual pruning (Zhu & Gupta 2017): s = s_f + (s_i - s_f) * (1 - t)^3, t in [0, 1]."""
    t = min(max(progress, 0.0), 1.0)
    return target + (initial - target) * (1.0 - t) ** power


def polynomial_points(target: float, steps: int) -> list[float]:
    """The sparsity at each of `steps` evenly spaced ramp points (the last is `target`)."""
    return [polynomial_sparsity(target, k / steps) for k in range(1, steps + 1)]


@dataclasses.dataclass
class FinetuneResult:
    epochs: int = 0  # epochs actually run (early stopping may end sooner)
    best_epoch: int | None = None  # 0-based epoch whose weights were kept
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> float | None:
        return None if self.best_epoch is None else self.val_accuracy[self.best_epoch]


def finetune(
    model: nn.Module, train: Any, val: Any, *, epochs: int, lr: float, patience: int,
    batch_size: int, seed: int, after_step: Callable[[nn.Module], None] | None = None,
    keep_best: bool = True, loss: LossFn | None = None,
    on_epoch: Callable[[int, float | None], None] | None = None, progress: bool = True,
    desc: str = "finetune",
) -> FinetuneResult:
    """Train `epochs` epochs (edgeopt.training.fit, one epoch per call) with a progress bar.

    With `val` and `keep_best`, keeps the weights of the best validation epoch and stops after
    `patience` epochs without improvement (without `keep_best`, e.g. while sparsity still
    ramps up, every epoch runs and the last weights stay). `loss` replaces cross-entropy;
    `on_epoch(epoch, val_accuracy)` runs after each epoch."""
    result = FinetuneResult()
    start = time.perf_counter()
    best_state, best, improved = None, -1.0, 0
    bar = progress_bar(total=epochs, desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in range(epochs):
        fit(model, train, None, epochs=1, lr=lr, batch_size=batch_size, seed=seed + epoch,
            loss_fn=loss or loss_fn, after_step=after_step, progress=False)
        result.epochs += 1
        bar.update(1)
        acc = evaluate(model, val) if val is not None else None
        if on_epoch is not None:
            on_epoch(epoch, acc)
        if acc is None:
            continue
        result.val_accuracy.append(acc)
        bar.set_postfix(val_acc=f"{acc:.4f}")
        if acc > best:
            improved = epoch
        if acc >= best:  # ties keep the later (longer-trained) weights
            best, result.best_epoch = acc, epoch
            best_state = copy.deepcopy(model.state_dict()) if keep_best else None
        if keep_best and epoch - improved >= patience:
            break
    bar.close()
    if best_state is not None and keep_best:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
