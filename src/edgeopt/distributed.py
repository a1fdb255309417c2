"""Training on several processes: `torchrun` sets the environment, edgeopt reads it.

    torchrun --nproc_per_node 2 my_script.py          # every rank runs the same script

Every rank runs the same code. A training step splits each *global* batch (the batch the
1-process run would take) between the ranks; DistributedDataParallel averages the gradients and
each rank's loss is weighted by its share of the batch, so the averaged gradient is the gradient
of the whole batch and N processes follow the 1-process trajectory (up to float summation
order). Batch-norm statistics are per rank (no SyncBatchNorm on CPU). Rank 0 alone writes files;
the others wait at a barrier. Without torchrun (or with one process) every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

__all__ = ["active", "barrier", "is_main", "main_first", "rank", "setup", "shard_batches",
           "shuffled_loader", "sum_all", "weight", "world_size", "wrap"]


def setup() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU), once; True when
    training is distributed. Called by every training loop, so user scripts run unchanged."""
    if dist.is_available() and not dist.is_initialized() and int(
            os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return active()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if setup() else 0


def world_size() -> int:
    return dist.get_world_size() if setup() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """`with main_first() as main:` rank 0 runs the body (e.g. writes files) while the others
    wait; then the others run it. The body sees whether it is rank 0."""
    if not is_main():
        barrier()
    yield is_main()
    if is_main():
        barrier()


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel around `module` when distributed (it also copies rank 0's
    weights to every rank), else `module` itself. Every trainable parameter must take part in
    each step's loss (DDP's default; freeze the ones that do not)."""
    if not setup():
        return module
    return nn.parallel.DistributedDataParallel(module)


def shuffled_loader(dataset: Dataset, batch_size: int, generator: torch.Generator
                    ) -> DataLoader:
    """The 1-process shuffled DataLoader; distributed, each rank loads only its share of every
    global batch (the same permutation: same seed, same draws from `generator`)."""
    if not setup():
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, False)
    return DataLoader(dataset, batch_sampler=_RankBatches(batches), generator=generator)


class _RankBatches:
    """Rank r's rows of each global batch: indices r, r + W, r + 2W, ...

    A global batch with fewer rows than ranks gives the short ranks its first row again
    (every rank must take part in each step); that row then counts twice."""

    def __init__(self, batches: BatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[rank()::world_size()] or batch[:1]


def shard_batches(data: Iterable[Any]) -> Iterable[Any]:
    """Rank-sharded batches of any re-iterable source (list, DataLoader, IterableDataset):
    every rank reads the same global batches and keeps its rows."""
    return _Sharded(data) if setup() else data


class _Sharded:
    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Any]:
        for batch in self.data:
            yield _rows(batch)


def _rows(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        part = batch[rank()::world_size()]
        return part if part.shape[0] else batch[:1]
    if isinstance(batch, list | tuple):
        return type(batch)(_rows(part) for part in batch)
    return batch


def weight(rows: int) -> float:
    """Factor for this rank's mean loss over `rows` rows so that DDP's gradient average equals
    the gradient of the mean over the whole global batch (1.0 when not distributed)."""
    if not active():
        return 1.0
    total = sum_all([float(rows)])[0]
    return rows * world_size() / total


def sum_all(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (the values themselves on one process)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()
