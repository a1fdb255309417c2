"""Measure an exported model where it will run: ONNX Runtime on this CPU.

Accuracy runs in large batches (the export has a dynamic batch); latency is timed on real
samples at the deployment batch size. Timings on small models are noisy (tens of percent run to
run), so speedups should come from `compare_latency`, which interleaves the models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeopt.data import iter_batches
from edgeopt.errors import ConfigError, DataError, ModelError, invalid
from edgeopt.progress import bar as progress_bar
from edgeopt.runtime.inspect import (
    census_of,
    check_model_path,
    cpu_info,
    open_session,
    session_options,
    size_on_disk,
)

EVAL_BATCH = 256  # accuracy batches: big enough to amortize per-call overhead
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One model measured in ONNX Runtime. Latencies in milliseconds per batch."""

    path: str
    accuracy: float | None
    size_bytes: int
    latency_ms: float
    latency_p90_ms: float
    latency_min_ms: float
    batch_size: int
    threads: int
    warmup: int
    runs: int
    num_samples: int
    optimization: str
    ort_version: str
    cpu: str
    cpu_flags: tuple[str, ...]
    int8_ops: dict[str, int]
    float_ops: dict[str, int]
    qdq_ops: dict[str, int]

    @property
    def runs_int8(self) -> bool:
        """True when most compute kernels ORT runs are integer kernels."""
        return sum(self.int8_ops.values()) > sum(self.float_ops.values())

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cpu_flags"] = list(self.cpu_flags)
        out["runs_int8"] = self.runs_int8
        return out


def measure(
    path: str | os.PathLike[str],
    data: Any,
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    batch_size: int = 1,
    latency_samples: int | None = None,
    progress: bool = False,
    optimization: str = "all",
) -> Measurement:
    """Accuracy, size on disk, latency and kernel census of an .onnx file in ONNX Runtime.

    `data` is a Dataset, DataLoader or iterable of batches; accuracy is top-1 over all of it
    (None when it has no labels). Latency is the median (and p90) over `runs` timed calls of
    `batch_size` real samples after `warmup` calls, cycling through the first `latency_samples`
    samples (default 64). `optimization` is the ORT graph level: disable/basic/extended/all.
    """
    file = check_model_path(path, "measure")
    _check_counts(threads=threads, runs=runs, batch_size=batch_size, warmup=(warmup, 0))
    if latency_samples is not None:
        _check_counts(latency_samples=latency_samples)
    with tempfile.TemporaryDirectory(prefix="edgeopt-measure-") as tmp:
        options = session_options(threads, optimization)
        # The timing session also writes its optimized graph: that is the census, for free.
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        session = open_session(file, options)
        ops = census_of(options.optimized_model_filepath)
    feeder = _Feeder(session, batch_size)
    accuracy, count, pool = _accuracy(feeder, data, latency_samples or 64, progress)
    times = _time_runs(session, feeder.latency_feeds(pool), warmup, runs, progress)
    import onnxruntime as ort

    cpu, flags = cpu_info()
    return Measurement(
        path=str(file),
        accuracy=accuracy,
        size_bytes=size_on_disk(file),
        latency_ms=float(np.median(times)),
        latency_p90_ms=float(np.percentile(times, 90)),
        latency_min_ms=float(np.min(times)),
        batch_size=feeder.latency_batch,
        threads=threads,
        warmup=warmup,
        runs=runs,
        num_samples=count,
        optimization=optimization,
        ort_version=ort.__version__,
        cpu=cpu,
        cpu_flags=flags,
        int8_ops=ops["int8_ops"],
        float_ops=ops["float_ops"],
        qdq_ops=ops["qdq_ops"],
    )


def predict(
    path: str | os.PathLike[str], data: Any, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """ONNX Runtime's first output for every sample of `data`, and the labels when it has them."""
    file = check_model_path(path, "predict")
    _check_counts(threads=threads)
    feeder = _Feeder(open_session(file, session_options(threads, "all")), 1)
    outputs, labels = [], []
    for inputs, targets in _chunks(data, feeder.eval_batch):
        outputs.append(feeder.run(inputs.detach().cpu().numpy()))
        labels.append(None if targets is None else targets.detach().cpu().numpy())
    if not outputs:
        raise DataError("predict.data is empty; give at least one batch of inputs.")
    has_labels = all(y is not None for y in labels)
    return np.concatenate(outputs), (np.concatenate(labels) if has_labels else None)


def compare_latency(
    paths: Sequence[str | os.PathLike[str]],
    data: Any,
    threads: int = 1,
    *,
    rounds: int = 40,
    runs_per_round: int = 5,
    warmup: int = 10,
    batch_size: int = 1,
    optimization: str = "all",
    progress: bool = False,
) -> list[float]:
    """Median latency (ms) of each model, timed round-robin so drift hits all of them alike.

    Each round runs every model `runs_per_round` times, starting from a rotating model, on
    the same real samples. Returns one median per path, in the order given.
    """
    if isinstance(paths, str | os.PathLike) or not paths:
        raise invalid("compare_latency.paths", "a non-empty list of .onnx paths", paths)
    files = [check_model_path(p, "compare_latency") for p in paths]
    _check_counts(
        threads=threads,
        rounds=rounds,
        runs_per_round=runs_per_round,
        batch_size=batch_size,
        warmup=(warmup, 0),
    )
    sessions = [open_session(f, session_options(threads, optimization)) for f in files]
    pool = _collect_samples(data, 64)
    feeds = [_Feeder(s, batch_size).latency_feeds(pool) for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for index, session in enumerate(sessions):
        _time_runs(session, feeds[index], warmup, 0, progress=False)
    bar = progress_bar(total=rounds, desc="latency (interleaved)", disable=not progress,
                       leave=False)
    with _no_gc():
        for round_ in range(rounds):
            for offset in range(len(sessions)):
                index = (round_ + offset) % len(sessions)  # rotate who goes first
                times[index].extend(
                    _timed(sessions[index], feeds[index], runs_per_round, round_ * runs_per_round)
                )
            bar.update()
    bar.close()
    return [float(np.median(t)) for t in times]


def _check_counts(**values: Any) -> None:
    """Each value must be an int >= its minimum (1 unless given as (value, minimum))."""
    for name, spec in values.items():
        value, minimum = spec if isinstance(spec, tuple) else (spec, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise invalid(name, f"an int >= {minimum}", value)


class _Feeder:
    """Turns numpy inputs into ORT feeds, honouring a fixed batch size if the export has one."""

    def __init__(self, session: Any, batch_size: int) -> None:
        self.session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"measure supports models with one input; this one has {len(inputs)} "
                f"({', '.join(i.name for i in inputs)})."
            )
        self.name = inputs[0].name
        self.dtype = _ORT_TO_NUMPY.get(inputs[0].type, np.float32)
        self.shape = inputs[0].shape
        first = self.shape[0] if self.shape else None
        self.fixed = first if isinstance(first, int) else None
        if self.fixed is not None and batch_size != self.fixed:
            raise ConfigError(
                f"the model was exported with a fixed batch of {self.fixed}; pass "
                f"batch_size={self.fixed} or re-export it with dynamic_batch=True."
            )
        self.latency_batch = batch_size
        self.eval_batch = self.fixed or EVAL_BATCH

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The first output for `inputs`, padded to and cut from a fixed batch when needed."""
        count = inputs.shape[0]
        if self.fixed is not None and count != self.fixed:
            inputs = np.resize(inputs, (self.fixed, *inputs.shape[1:]))  # repeats rows to fill
        try:
            out = self.session.run(None, {self.name: inputs.astype(self.dtype, copy=False)})[0]
        except Exception as exc:
            raise DataError(
                f"inputs of shape {tuple(inputs.shape)} do not fit the model input "
                f"{self.name!r} of shape {self.shape}: {str(exc)[:300]}"
            ) from exc
        return out[:count]

    def latency_feeds(self, pool: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Batches of `latency_batch` real samples, cycling through `pool`."""
        size = self.latency_batch
        if pool.shape[0] < size:
            pool = np.resize(pool, (size, *pool.shape[1:]))
        starts = range(0, max(pool.shape[0] - size + 1, 1), size)
        return [{self.name: pool[s : s + size].astype(self.dtype)} for s in starts]


def _accuracy(
    feeder: _Feeder, data: Any, keep: int, progress: bool
) -> tuple[float | None, int, np.ndarray]:
    """Top-1 accuracy over `data` (None without labels), the sample count, first `keep` inputs."""
    correct = total = count = 0
    labeled, kept = True, []
    bar = progress_bar(
        total=_num_samples(data), desc="accuracy", unit="sample", disable=not progress, leave=False
    )
    for inputs, targets in _chunks(data, feeder.eval_batch):
        array = inputs.detach().cpu().numpy()
        if sum(k.shape[0] for k in kept) < keep:
            kept.append(array[:keep])
        outputs = feeder.run(array)
        count += array.shape[0]
        bar.update(array.shape[0])
        if targets is None:
            labeled = False
            continue
        hits, n = _top1(outputs, targets.detach().cpu().numpy())
        correct, total = correct + hits, total + n
    bar.close()
    if count == 0:
        raise DataError("measure.data is empty; give at least one labeled batch.")
    accuracy = correct / total if labeled and total else None
    return accuracy, count, np.concatenate(kept)[:keep]


def _num_samples(data: Any) -> int | None:
    """Samples in a Dataset or DataLoader, for the progress bar; None when unknown."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset):
        return None  # an iterable of batches: its len() counts batches, not samples
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _chunks(data: Any, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches of up to `size` samples, whatever batching `data` came with."""
    for inputs, targets in iter_batches(data, batch_size=size, what="measure.data"):
        for start in range(0, inputs.shape[0], size):
            yield (
                inputs[start : start + size],
                None if targets is None else targets[start : start + size],
            )


def _top1(outputs: np.ndarray, targets: np.ndarray) -> tuple[int, int]:
    """Correct predictions and count; targets are class indices or one-hot rows."""
    if targets.shape == outputs.shape and outputs.ndim >= 2:
        targets = targets.argmax(-1)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        predicted = outputs.argmax(-1)
    else:  # one logit per sample: binary decision at 0
        predicted = (outputs.reshape(outputs.shape[0], -1)[:, 0] > 0).astype(np.int64)
    if predicted.size != targets.size:
        raise DataError(
            f"measure.data labels of shape {targets.shape} do not match predictions of "
            f"shape {predicted.shape}; give one class index per sample."
        )
    return int((predicted.reshape(-1) == targets.reshape(-1)).sum()), int(targets.size)


def _collect_samples(data: Any, keep: int) -> np.ndarray:
    kept, count = [], 0
    for inputs, _ in iter_batches(data, batch_size=keep, what="compare_latency.data"):
        kept.append(inputs.detach().cpu().numpy())
        count += inputs.shape[0]
        if count >= keep:
            break
    if not kept:
        raise DataError("compare_latency.data is empty; give at least one batch of inputs.")
    return np.concatenate(kept)[:keep]


def _time_runs(
    session: Any, feeds: list[dict[str, np.ndarray]], warmup: int, runs: int, progress: bool
) -> list[float]:
    _timed(session, feeds, warmup, 0)
    bar = progress_bar(total=runs, desc="latency", disable=not progress or runs == 0, leave=False)
    times = []
    with _no_gc():
        for start in range(0, runs, 10):  # chunks of 10 keep the bar cheap
            chunk = _timed(session, feeds, min(10, runs - start), start)
            times.extend(chunk)
            bar.update(len(chunk))
    bar.close()
    return times


def _timed(session: Any, feeds: list[dict[str, np.ndarray]], n: int, start: int) -> list[float]:
    """Milliseconds of each of `n` session runs, cycling through `feeds`."""
    out = []
    for i in range(n):
        feed = feeds[(start + i) % len(feeds)]
        begin = time.perf_counter()
        session.run(None, feed)
        out.append((time.perf_counter() - begin) * 1e3)
    return out


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Keep the garbage collector from pausing inside timed regions."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
