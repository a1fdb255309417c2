"""One adapter from DataLoader / Dataset / iterable of batches to (inputs, targets) batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from edgeopt.errors import ConfigTypeError, DataError

Batch = tuple[torch.Tensor, torch.Tensor | None]


def iter_batches(data: Any, *, batch_size: int = 64, what: str = "data") -> Iterator[Batch]:
    """Yield (inputs, targets-or-None) from a DataLoader, a Dataset or an iterable of batches."""
    if data is None:
        raise DataError(f"{what} is required but none was given; pass a DataLoader or Dataset.")
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, torch.Tensor):
        data = [data]
    if not isinstance(data, Iterable):
        raise ConfigTypeError(
            f"{what} must be a DataLoader, a Dataset or an iterable of batches; "
            f"got {type(data).__name__}."
        )
    for batch in data:
        yield _split(batch, what)


def _split(batch: Any, what: str) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        target = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], target
    raise ConfigTypeError(
        f"each batch of {what} must be a tensor or an (inputs, targets) tuple; "
        f"got {type(batch).__name__}."
    )


def take_inputs(data: Any, limit: int, *, what: str = "data") -> list[torch.Tensor]:
    """Collect up to `limit` input samples (in batches) and check they are usable."""
    batches, count = [], 0
    for inputs, _ in iter_batches(data, what=what):
        if inputs.numel() == 0:
            continue
        if not torch.isfinite(inputs).all():
            raise DataError(f"{what} contains NaN or inf values; clean the inputs first.")
        batches.append(inputs)
        count += inputs.shape[0]
        if count >= limit:
            break
    if not batches:
        raise DataError(f"{what} is empty; give at least one batch of inputs.")
    return batches


def example_input(data: Any) -> torch.Tensor:
    """The first sample of `data` as a batch of one."""
    inputs = take_inputs(data, 1)[0]
    return inputs[:1]


def collect_labeled(data: Any, limit: int, *, what: str = "data"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to `limit` samples of `data` as one input tensor, plus labels when every batch has them."""
    inputs, labels, seen = [], [], 0
    for x, y in iter_batches(data, what=what):
        inputs.append(x)
        labels.append(y)
        seen += x.shape[0]
        if seen >= limit:
            break
    if not inputs:
        raise DataError(f"{what} is empty; give at least one batch of inputs.")
    has_labels = all(y is not None for y in labels)
    return torch.cat(inputs)[:limit], (torch.cat(labels)[:limit] if has_labels else None)


def model_arguments(model: Any, example_input: Any, where: str) -> tuple[torch.Tensor, ...]:
    """Check a (model, example input) pair and return the inputs as a tuple of tensors."""
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"{where}.model must be a torch.nn.Module; got "
                              f"{type(model).__name__}.")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ConfigTypeError(f"{where}.example_input must be a tensor or a tuple of tensors; "
                              f"got {type(example_input).__name__}.")
    return args


def holdout(data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, val) with `fraction` of `data` held out, or (data, None) when too small.

    Datasets (and a DataLoader's dataset) split by a seeded permutation; lists of batches give
    their last batches to val."""
    if fraction <= 0:
        return data, None
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        data = data.dataset
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        size = len(data)  # type: ignore[arg-type]
        if size < 2:
            return data, None
        held = min(size - 1, max(1, round(size * fraction)))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
        return Subset(data, order[held:]), Subset(data, order[:held])
    batches = list(data) if not isinstance(data, torch.Tensor) else [data]
    if len(batches) < 2:
        return batches, None
    held = min(len(batches) - 1, max(1, round(len(batches) * fraction)))
    return batches[:-held], batches[-held:]
