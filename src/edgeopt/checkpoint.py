"""Per-epoch checkpoints of training loops, so an interrupted run resumes mid-stage.

The recipe runner opens `checkpoints(folder)` around each stage; every training loop started
inside it (`training.fit`, distillation) asks `loop(...)` for its checkpoint, the n-th loop of the
stage getting the n-th file. A checkpoint holds the module and optimizer states, the RNG states
and the loop's own counters after its last finished epoch. It is only used when the loop starts
from the same weights and settings it was saved from (a fingerprint), so re-running a finished
stage skips its training and a changed starting point trains afresh.

Files are written atomically with `torch.save` and read back with `weights_only=True`: tensors,
numbers, strings and containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt import interrupt
from edgeopt.atomic import atomic_open
from edgeopt.errors import EdgeoptError

__all__ = ["CheckpointError", "Loop", "checkpoints", "fingerprint", "load_tensors", "loop"]

_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edgeopt_ckpt", default=None)
_COUNT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("edgeopt_ckpt_n")


class CheckpointError(EdgeoptError, ValueError):
    """A checkpoint file cannot be read safely (corrupt, truncated or not tensors only)."""


@contextlib.contextmanager
def checkpoints(folder: str | Path | None) -> Iterator[None]:
    """Training loops started inside keep per-epoch checkpoints in `folder` (None: none)."""
    token = _FOLDER.set(None if folder is None else Path(folder))
    count = _COUNT.set([0])
    try:
        yield
    finally:
        _FOLDER.reset(token)
        _COUNT.reset(count)


def loop(kind: str, modules: dict[str, nn.Module], settings: dict[str, Any]) -> Loop | None:
    """The checkpoint of the next training loop in this stage, or None when not checkpointing.

    Call it before training, with the modules as they are at the start (they are fingerprinted)
    and every setting that changes what the loop computes."""
    folder = _FOLDER.get()
    if folder is None:
        return None
    counter = _COUNT.get()
    counter[0] += 1
    key = fingerprint(modules, {"kind": kind, **settings})
    return Loop(folder / f"{counter[0]:03d}-{kind}.pt", key)


def fingerprint(modules: dict[str, nn.Module], settings: dict[str, Any]) -> str:
    """sha256 of the settings and of every tensor of the modules' states (names, dtypes, bytes)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for owner in sorted(modules):
        for name, value in modules[owner].state_dict().items():
            if not isinstance(value, torch.Tensor):
                continue
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{owner}.{name}:{tensor.dtype}:{list(value.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_tensors(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers; anything else is refused."""
    try:
        with warnings.catch_warnings():  # pickle-protocol chatter; refusal is the error below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, TypeError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); delete it, or "
            "rerun without --resume to start over.") from None


class Loop:
    """One training loop's checkpoint file: `restore` before the first epoch, `save` after each."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def restore(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                *, scheduler: Any = None, generator: torch.Generator | None = None) -> dict | None:
        """Load the last saved epoch into the given objects and return what `save` was given as
        `extra` (plus "best": the saved best state or None); None when there is nothing to
        resume (no file, or one saved from a different starting point)."""
        if not self.path.is_file():
            return None
        state = load_tensors(self.path)
        if not isinstance(state, dict) or state.get("key") != self.key:
            self.path.unlink(missing_ok=True)  # another starting point: train afresh
            return None
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if generator is not None and state.get("generator") is not None:
            generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        extra = json.loads(state["extra"])
        extra["best"] = state.get("best")
        return extra

    def save(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
             extra: dict[str, Any], *, scheduler: Any = None,
             generator: torch.Generator | None = None,
             best: dict[str, torch.Tensor] | None = None) -> None:
        """Write the state after a finished epoch; `extra` must be JSON (counters, curves)."""
        state = {
            "key": self.key,
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "generator": None if generator is None else generator.get_state(),
            "rng": torch.get_rng_state(),
            "extra": json.dumps(extra),
            "best": best,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.path, "wb") as handle:
            torch.save(state, handle)
        interrupt.check()  # the epoch is kept: a Ctrl-C swallowed during it stops here
