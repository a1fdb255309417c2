"""One adapter from DataLoader / Dataset / iterable of batches to (inputs, targets) batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

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
