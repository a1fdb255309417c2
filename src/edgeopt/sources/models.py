"""A user's model: a factory plus weights, or a local transformers folder. Never retrained,
never downloaded, weights never unpickled."""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgeopt.errors import ConfigError, ConfigTypeError, invalid
from edgeopt.sources.imports import call, check_reference, resolve

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_FIELD = "recipe.model"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where the baseline comes from. Paths are absolute (resolved against the recipe)."""

    factory: str | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: Path | None = None
    hf: Path | None = None
    input_shape: tuple[int, ...] | None = None
    root: Path | None = None  # the recipe's folder: on sys.path while the factory imports

    @property
    def label(self) -> str:
        if self.hf is not None:
            return self.hf.name
        return self.factory.split(":")[1] if self.factory else "model"


def parse_model_source(raw: dict[str, Any], root: Path | None) -> ModelSource:
    """Check a recipe's `model:` mapping without importing or loading anything."""
    allowed = {"factory", "kwargs", "weights", "hf", "input_shape"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{_FIELD}.{unknown[0]} is not a known key; valid: "
                          f"{', '.join(sorted(allowed))}.")
    if ("factory" in raw) == ("hf" in raw):
        raise ConfigError(f"{_FIELD} needs exactly one of 'factory' (module:function) or 'hf' "
                          "(a local transformers folder).")
    if "hf" in raw and ("weights" in raw or "kwargs" in raw):
        raise ConfigError(f"{_FIELD}.hf loads its own weights and config; drop "
                          f"{_FIELD}.weights / {_FIELD}.kwargs.")
    factory = raw.get("factory")
    if factory is not None:
        check_reference(factory, f"{_FIELD}.factory")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigTypeError(f"{_FIELD}.kwargs must be a mapping of argument names to values; "
                              f"got {kwargs!r}.")
    return ModelSource(factory=factory, kwargs=dict(kwargs),
                       weights=_weights_path(raw.get("weights"), root),
                       hf=_folder(raw.get("hf"), root, f"{_FIELD}.hf"),
                       input_shape=parse_shape(raw.get("input_shape"), f"{_FIELD}.input_shape"),
                       root=root)


def parse_shape(raw: Any, field: str) -> tuple[int, ...] | None:
    """One sample's shape, without the batch dimension."""
    if raw is None:
        return None
    if (not isinstance(raw, list | tuple) or not raw
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in raw)):
        raise invalid(field, "a non-empty list of positive ints (one sample, no batch dimension)",
                      raw)
    return tuple(raw)


def resolve_path(raw: Any, root: Path | None, field: str) -> Path:
    if not isinstance(raw, str) or not raw:
        raise invalid(field, "a path (relative to the recipe file)", raw)
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() or root is None else root / path


def _weights_path(raw: Any, root: Path | None) -> Path | None:
    if raw is None:
        return None
    path = resolve_path(raw, root, f"{_FIELD}.weights")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise invalid(f"{_FIELD}.weights", f"a weights file ({', '.join(WEIGHT_SUFFIXES)})", raw)
    if not path.is_file():
        raise ConfigError(f"{_FIELD}.weights: file {str(path)!r} does not exist.")
    return path


def _folder(raw: Any, root: Path | None, field: str) -> Path | None:
    if raw is None:
        return None
    path = resolve_path(raw, root, field)
    if not path.is_dir():
        raise ConfigError(f"{field}: folder {str(path)!r} does not exist.")
    return path


def load_model(source: ModelSource) -> nn.Module:
    """The user's baseline in eval mode, weights loaded as given."""
    if source.hf is not None:
        from edgeopt.sources.hf import load_hf

        return load_hf(source.hf).eval()
    model = call(resolve(source.factory, f"{_FIELD}.factory", source.root), source.kwargs,
                 f"{_FIELD}.factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{_FIELD}.factory must return a torch.nn.Module; "
                          f"{source.factory!r} returned {type(model).__name__}.")
    if source.weights is not None:
        _load_weights(model, source.weights)
    return model.eval()


def read_state_dict(path: Path, field: str = f"{_FIELD}.weights") -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a state dict saved by torch.save, never unpickled."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # pickle-protocol chatter; refusal is the error below
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ConfigError(f"{field}: {str(path)!r} holds objects other than tensors and is "
                          f"refused (it would have to be unpickled): {first}") from None
    except Exception as exc:
        raise ConfigError(f"{field}: {str(path)!r} cannot be read: {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    return _tensors_only(_unwrap(state), path, field)


def _unwrap(state: Any) -> Any:
    # Checkpoints often nest the weights: {"state_dict": {...}} or {"model": {...}}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def _tensors_only(state: Any, path: Path, field: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"{field}: {str(path)!r} is not a state dict (a mapping of names to "
                          "tensors).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(model: nn.Module, path: Path) -> None:
    field = f"{_FIELD}.weights"
    state = read_state_dict(path, field)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_few(missing)}"] if missing else []) + (
            [f"unexpected {_few(unexpected)}"] if unexpected else [])
        raise ConfigError(f"{field}: {path.name} does not match the factory's model: "
                          f"{'; '.join(parts)}.")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigError(f"{field}: {path.name}: {name!r} has shape {tuple(tensor.shape)}, "
                              f"the model expects {tuple(expected[name].shape)}.")
    model.load_state_dict(state)


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{shown} (+{len(names) - 3} more)" if len(names) > 3 else shown
