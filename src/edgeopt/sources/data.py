"""A user's data: npz arrays, a class-per-folder image tree, or a factory returning splits."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from edgeopt.datasets import Splits, stratified_split
from edgeopt.errors import ConfigError, ConfigTypeError, invalid
from edgeopt.sources.imports import call, check_reference, resolve
from edgeopt.sources.models import resolve_path

_FIELD = "recipe.data"
VAL_FRACTION = 0.1  # of train, when no val split is given
FOLDER_FRACTIONS = (0.1, 0.2)  # (val, test) of an image folder


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
    kind: str  # "npz" | "folder" | "factory"
    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    folder: Path | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    mean: tuple[float, ...] | None = None  # per channel, applied to float inputs
    std: tuple[float, ...] | None = None
    root: Path | None = None

    @property
    def label(self) -> str:
        if self.kind == "npz":
            return self.train.name if self.train else "npz"
        if self.kind == "folder":
            return self.folder.name if self.folder else "folder"
        return self.factory.split(":")[1] if self.factory else "data"


def parse_data_source(raw: dict[str, Any], root: Path | None) -> DataSource:
    """Check a recipe's `data:` mapping; files must exist, nothing is read yet."""
    kinds = [k for k in ("train", "folder", "factory") if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{_FIELD} needs exactly one of 'train' (+ 'test', optional 'val': "
                          ".npz files), 'folder' (one sub-folder per class) or 'factory' "
                          f"(module:function); got keys {sorted(raw)}.")
    kind = {"train": "npz", "folder": "folder", "factory": "factory"}[kinds[0]]
    allowed = {"npz": {"train", "val", "test"}, "folder": {"folder"},
               "factory": {"factory", "kwargs"}}[kind] | {"mean", "std"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{_FIELD}.{unknown[0]} is not a known key with {kinds[0]!r}; valid: "
                          f"{', '.join(sorted(allowed))}.")
    mean, std = _normalization(raw)
    common = {"kind": kind, "mean": mean, "std": std, "root": root}
    if kind == "npz":
        if "test" not in raw:
            raise ConfigError(f"{_FIELD}.test is required with {_FIELD}.train (an .npz file with "
                              "array 'x' and optionally 'y').")
        files = {k: _npz_path(raw[k], root, f"{_FIELD}.{k}") for k in ("train", "val", "test")
                 if k in raw}
        return DataSource(**common, **files)
    if kind == "folder":
        folder = resolve_path(raw["folder"], root, f"{_FIELD}.folder")
        if not folder.is_dir():
            raise ConfigError(f"{_FIELD}.folder: {str(folder)!r} is not a folder.")
        return DataSource(**common, folder=folder)
    check_reference(raw["factory"], f"{_FIELD}.factory")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigTypeError(f"{_FIELD}.kwargs must be a mapping; got {kwargs!r}.")
    return DataSource(**common, factory=raw["factory"], kwargs=dict(kwargs))


def _normalization(raw: dict[str, Any]) -> tuple[tuple[float, ...] | None, ...]:
    if ("mean" in raw) != ("std" in raw):
        raise ConfigError(f"{_FIELD}.mean and {_FIELD}.std go together (per-channel lists).")
    if "mean" not in raw:
        return None, None
    out = []
    for key in ("mean", "std"):
        values = raw[key]
        if (not isinstance(values, list) or not values or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            raise invalid(f"{_FIELD}.{key}", "a non-empty list of numbers, one per channel",
                          values)
        out.append(tuple(float(v) for v in values))
    if len(out[0]) != len(out[1]) or min(out[1]) <= 0:
        raise invalid(f"{_FIELD}.std", f"{len(out[0])} positive numbers (one per mean)", out[1])
    return out[0], out[1]


def _npz_path(raw: Any, root: Path | None, field: str) -> Path:
    path = resolve_path(raw, root, field)
    if path.suffix != ".npz":
        raise invalid(field, "an .npz file (arrays 'x' and optionally 'y')", raw)
    if not path.is_file():
        raise ConfigError(f"{field}: file {str(path)!r} does not exist.")
    return path


def load_data(source: DataSource, input_shape: tuple[int, ...] | None, seed: int) -> Splits:
    """Train / val / test splits of the user's data, checked against `input_shape`."""
    if source.kind == "npz":
        parts = {k: _read_npz(getattr(source, k), f"{_FIELD}.{k}")
                 for k in ("train", "val", "test") if getattr(source, k) is not None}
    elif source.kind == "folder":
        from edgeopt.sources.images import read_image_folder

        if input_shape is None:
            raise ConfigError("recipe.model.input_shape is required with recipe.data.folder "
                              "(images are resized to it).")
        x, y, classes = read_image_folder(source.folder, input_shape, f"{_FIELD}.folder")
        parts = _split_folder(x, y, seed)
        return _splits(parts, source, input_shape, seed, classes)
    else:
        parts = _from_factory(source)
    return _splits(parts, source, input_shape, seed, ())


Arrays = tuple[np.ndarray, np.ndarray | None]


def _read_npz(path: Path, field: str) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "x" not in names:
                raise ConfigError(f"{field}: {path.name} has no array 'x' (it has: "
                                  f"{', '.join(names) or 'none'}).")
            x, y = archive["x"], archive["y"] if "y" in names else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{field}: {str(path)!r} is not a readable .npz file without pickled "
                          f"objects: {str(exc)[:160]}") from None
    return _check_arrays(x, y, field)


def _check_arrays(x: Any, y: Any, field: str) -> Arrays:
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(f"{field}: 'x' must hold samples along its first axis; got shape "
                          f"{x.shape}.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ConfigError(f"{field}: 'x' must be numeric; got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ConfigError(f"{field}: 'x' contains NaN or inf.")
    if y is not None:
        y = np.asarray(y)
        if y.shape[:1] != x.shape[:1]:
            raise ConfigError(f"{field}: 'y' has {y.shape[0] if y.ndim else 0} entries for "
                              f"{x.shape[0]} samples in 'x'.")
        if not np.issubdtype(y.dtype, np.number):
            raise ConfigError(f"{field}: 'y' must be numeric; got dtype {y.dtype}.")
    return x, y


def _split_folder(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Arrays]:
    val_frac, test_frac = FOLDER_FRACTIONS
    rest, test = stratified_split(y, test_frac, seed)
    train, val = stratified_split(y[rest], val_frac / (1 - test_frac), seed)
    train, val = rest[train], rest[val]
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}


def _from_factory(source: DataSource) -> dict[str, Arrays]:
    field = f"{_FIELD}.factory"
    made = call(resolve(source.factory, field, source.root), source.kwargs, field)
    parts = {}
    for name in ("train", "val", "test"):
        dataset = getattr(made, name, None)
        if dataset is None and name == "val":
            continue
        if not isinstance(dataset, Dataset):
            raise ConfigError(f"{field} must return an object with .train and .test Datasets "
                              f"(and optionally .val); its .{name} is {type(dataset).__name__}.")
        parts[name] = _dataset_arrays(dataset, f"{field} .{name}")
    return parts


def _dataset_arrays(dataset: Dataset, field: str) -> Arrays:
    from edgeopt.data import collect_labeled

    try:
        x, y = collect_labeled(dataset, len(dataset), what=field)  # type: ignore[arg-type]
    except Exception as exc:
        raise ConfigError(f"{field} cannot be read as (input, label) samples: "
                          f"{type(exc).__name__}: {str(exc)[:160]}") from None
    return _check_arrays(x.numpy(), None if y is None else y.numpy(), field)


def _splits(parts: dict[str, Arrays], source: DataSource, input_shape: tuple[int, ...] | None,
            seed: int, classes: tuple[str, ...]) -> Splits:
    if "val" not in parts:
        x, y = parts["train"]
        keep, held = stratified_split(y if y is not None else np.zeros(len(x)), VAL_FRACTION,
                                      seed)
        parts = {**parts, "train": _take(parts["train"], keep), "val": _take(parts["train"], held)}
    shape = _common_shape(parts, input_shape)
    labels = [p[1] for p in parts.values()]
    num_classes = _num_classes(labels)
    mean, std = source.mean, source.std
    if mean is not None and len(mean) != shape[0]:
        raise invalid(f"{_FIELD}.mean", f"{shape[0]} values (one per channel of {shape})",
                      list(mean))
    datasets = {k: _dataset(x, y, mean, std) for k, (x, y) in parts.items()}
    return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"],
                  input_shape=shape, num_classes=num_classes, name=source.label,
                  classes=classes, mean=mean or (), std=std or ())


def _take(arrays: Arrays, index: np.ndarray) -> Arrays:
    return arrays[0][index], None if arrays[1] is None else arrays[1][index]


def _common_shape(parts: dict[str, Arrays], input_shape: tuple[int, ...] | None
                  ) -> tuple[int, ...]:
    for name, (x, _) in parts.items():
        sample = tuple(x.shape[1:])
        if input_shape is not None and sample != input_shape:
            raise ConfigError(f"{_FIELD}.{name}: samples have shape {list(sample)} but "
                              f"recipe.model.input_shape is {list(input_shape)}.")
        input_shape = sample
    assert input_shape is not None  # parts is never empty
    return input_shape


def _num_classes(labels: list[np.ndarray | None]) -> int:
    """Classes for integer labels, 0 for regression targets or no labels."""
    if any(y is None for y in labels):
        return 0
    if all(y.ndim == 1 and np.issubdtype(y.dtype, np.integer) for y in labels):
        return int(max(y.max() for y in labels)) + 1
    return 0


def _dataset(x: np.ndarray, y: np.ndarray | None, mean: tuple[float, ...] | None,
             std: tuple[float, ...] | None) -> TensorDataset:
    if np.issubdtype(x.dtype, np.floating) or mean is not None:
        x = x.astype(np.float32)
        if mean is not None and std is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = (x - np.reshape(mean, shape)) / np.reshape(std, shape)
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))  # token ids
    if y is None:
        return TensorDataset(inputs)
    kind = np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32
    return TensorDataset(inputs, torch.from_numpy(np.ascontiguousarray(y, dtype=kind)))
