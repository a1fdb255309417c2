"""Small training helpers shared by the zoo, QAT, fine-tuning after pruning and distillation.

    history = fit(model, splits.train, splits.val, epochs=5)
    acc = evaluate(model, splits.test)

Data arguments accept a Dataset, a DataLoader or an iterable of (inputs, targets) batches.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from edgeopt import distributed
from edgeopt.checkpoint import Loop, loop
from edgeopt.data import Batch, iter_batches
from edgeopt.errors import ConfigTypeError, DataError, invalid
from edgeopt.progress import bar as progress_bar

__all__ = ["LossFn", "TrainHistory", "cross_entropy", "evaluate", "fit", "predict_logits"]

# loss_fn(logits, targets, inputs) -> scalar. `inputs` lets distillation query a teacher;
# `targets` is None for unlabeled batches.
LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass
class TrainHistory:
    """What `fit` did, one entry per epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)  # empty when no val data was given
    best_epoch: int | None = None  # 0-based epoch whose weights were kept (None: the last)
    seconds: float = 0.0

    @property
    def best_val_accuracy(self) -> float | None:
        return None if self.best_epoch is None else self.val_accuracy[self.best_epoch]


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor | None, inputs: torch.Tensor
) -> torch.Tensor:
    """The default loss: cross-entropy against integer class labels."""
    if targets is None:
        raise DataError("training data has no targets; give (inputs, targets) batches.")
    return F.cross_entropy(logits, targets)


def fit(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    epochs: int,
    lr: float = 1e-3,
    schedule: str = "constant",
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainHistory:
    """Train `model` in place with Adam; with `val`, keep the weights of the best val epoch.

    `schedule` is "constant" or "cosine" (lr annealed to zero over the epochs, per epoch).
    A Dataset is shuffled with a generator seeded from `seed`; the global torch RNG is seeded
    too (and restored afterwards), so the same seed and model give the same weights.
    `after_step(model)` runs after every optimizer step (e.g. to re-apply pruning masks).
    The model is left in eval() mode. Under torchrun each rank trains on its share of every
    batch with averaged gradients (edgeopt.distributed): the same weights as one process.
    """
    _check_fit_args(epochs, lr, schedule, batch_size)
    loss_fn = loss_fn or cross_entropy
    history = TrainHistory()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = _train_batches(train, batch_size, seed)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        best_acc, best_state = -1.0, None
        ckpt = loop("fit", {"model": model}, {"epochs": epochs, "lr": lr, "schedule": schedule,
                                              "batch_size": batch_size, "seed": seed})
        generator = getattr(loader, "generator", None)
        first, best_acc, best_state = _restore(ckpt, model, optimizer, scheduler, generator,
                                               history)
        bar = progress_bar(total=epochs, desc=desc, unit="epoch", leave=False, initial=first,
                           disable=not progress or not distributed.is_main())
        step = distributed.wrap(model)
        for epoch in range(first, epochs):
            loss = _train_epoch(step, loader, optimizer, loss_fn, after_step, epoch)
            history.train_loss.append(loss)
            if schedule == "cosine":
                scheduler.step()
            postfix = {"loss": f"{loss:.4f}"}
            if val is not None:
                acc = evaluate(model, val, batch_size=max(batch_size, 256))
                history.val_accuracy.append(acc)
                postfix["val_acc"] = f"{acc:.4f}"
                if acc >= best_acc:  # ties keep the later weights: tiny val sets saturate early
                    best_acc, history.best_epoch = acc, epoch
                    best_state = copy.deepcopy(model.state_dict())
            if ckpt is not None:  # resumable from here (edgeopt.checkpoint)
                ckpt.save({"model": model}, optimizer, {"epoch": epoch + 1, "best_acc": best_acc,
                          **asdict(history)}, scheduler=scheduler,
                          generator=generator, best=best_state)
            bar.set_postfix(postfix)
            bar.update(1)
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def _restore(ckpt: Loop | None, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, generator: torch.Generator | None,
             history: TrainHistory) -> tuple[int, float, dict[str, torch.Tensor] | None]:
    """(first epoch to run, best val accuracy, best weights) after the last saved epoch."""
    saved = None if ckpt is None else ckpt.restore({"model": model}, optimizer,
                                                   scheduler=scheduler, generator=generator)
    if saved is None:
        return 0, -1.0, None
    history.train_loss, history.val_accuracy = saved["train_loss"], saved["val_accuracy"]
    history.best_epoch = saved["best_epoch"]
    return saved["epoch"], saved["best_acc"], saved["best"]


def _check_fit_args(epochs: int, lr: float, schedule: str, batch_size: int) -> None:
    # Validate before any work, in the one message format.
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise invalid("fit.epochs", "an int >= 1", epochs)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise invalid("fit.lr", "a float > 0", lr)
    if schedule not in ("constant", "cosine"):
        raise invalid("fit.schedule", "one of 'constant', 'cosine'", schedule)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("fit.batch_size", "an int >= 1", batch_size)


def _train_batches(train: Any, batch_size: int, seed: int) -> Iterable[Any]:
    """A re-iterable source of training batches; map-style Datasets get a seeded shuffle."""
    if isinstance(train, Dataset) and not isinstance(train, IterableDataset):
        generator = torch.Generator().manual_seed(seed)
        return distributed.shuffled_loader(train, batch_size, generator)
    if train is None:
        raise DataError("fit needs training data; pass a Dataset or DataLoader.")
    if isinstance(train, Iterator):
        # A one-shot iterator would silently give empty epochs after the first.
        raise ConfigTypeError(
            "fit's train data must be re-iterable (a Dataset, DataLoader or list of batches); "
            "got a one-shot iterator."
        )
    return distributed.shard_batches(train)


def _train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    after_step: Callable[[nn.Module], None] | None,
    epoch: int,
) -> float:
    """One epoch; `model` may be the DistributedDataParallel wrapper of the trained model."""
    model.train()
    device = _device(model)
    total, count = 0.0, 0
    for inputs, targets in iter_batches(loader, what="train"):
        inputs = inputs.to(device)
        targets = targets.to(device) if targets is not None else None
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets, inputs)
        share = distributed.weight(inputs.shape[0])
        (loss * share if share != 1.0 else loss).backward()
        optimizer.step()
        if after_step is not None:
            after_step(getattr(model, "module", model))
        total += float(loss.detach()) * inputs.shape[0]
        count += inputs.shape[0]
    total, count = distributed.sum_all([total, count])
    if count == 0:
        raise DataError(f"train data gave no batches in epoch {epoch}; it must not be empty.")
    return total / count


@torch.no_grad()
def predict_logits(model: nn.Module, data: Any, batch_size: int = 256) -> torch.Tensor:
    """Model outputs for every input in `data`, concatenated along the batch dimension."""
    outputs = [logits for logits, _ in _forward(model, data, batch_size)]
    if not outputs:
        raise DataError("data is empty; give at least one batch of inputs.")
    return torch.cat(outputs)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 256, *,
             limit: int | None = None) -> float:
    """Top-1 accuracy of `model` on labeled `data` (or its first `limit` batches), in [0, 1].

    Outputs with a sequence axis (token classification) are scored per position."""
    correct, count = 0, 0
    for index, (output, targets) in enumerate(_forward(model, data, batch_size)):
        if limit is not None and index >= limit:
            break
        if targets is None:
            raise DataError("evaluate needs labeled data; give (inputs, targets) batches.")
        logits = logits_of(output)
        targets = targets.to(logits.device)
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    if count == 0:
        raise DataError("data is empty; give at least one labeled batch.")
    return correct / count


def logits_of(output: Any) -> torch.Tensor:
    """The class scores of a model output: a tensor, `.logits`, or the first tensor inside."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    for leaf in torch.utils._pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor):
            return leaf
    raise DataError(f"the model returned no tensor ({type(output).__name__}); cannot score it.")


def _forward(model: nn.Module, data: Any, batch_size: int) -> Iterator[Batch]:
    """(logits, targets) per batch in eval mode; the model's previous mode is restored."""
    was_training = model.training
    device = _device(model)
    model.eval()
    try:
        for inputs, targets in iter_batches(data, batch_size=batch_size):
            yield model(inputs.to(device)), targets
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    # Models without parameters (e.g. pure functional graphs) run on CPU.
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")
