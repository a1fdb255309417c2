"""The run's scratch folder `.DIR.edgeopt.partial`, beside DIR: the work in progress of one run,
and what an interrupted run resumes from.

Top level: exactly the files the run folder will have (``*.onnx``, and ``metrics.json``
rewritten after every stage, so `edgeopt report` shows what finished). ``.resume/`` holds the
rest: ``run.json`` (the recipe's key), ``stages/NAME.json`` (the stage's metrics row, written
last: a stage is finished when its row exists), ``stages/NAME.safetensors`` (the stage's weights)
and ``checkpoints/NAME/`` (per-epoch checkpoints of its training, `edgeopt.checkpoint`).

A finished run is published into DIR in one rename (an existing DIR is swapped out whole), so
DIR never holds half of a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.atomic import write_bytes, write_text
from edgeopt.checkpoint import CheckpointError, checkpoints
from edgeopt.errors import ConfigError, OutputError

SUFFIX = ".edgeopt.partial"
_PRIVATE = (".resume", ".publish", ".previous")  # never published
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM)  # only for files of the run itself


def scratch_path(out: Path) -> Path:
    """Where the run writing `out` keeps its work: a hidden folder beside `out`."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}{SUFFIX}"


def recipe_key(source: dict[str, Any], *labels: str) -> str:
    """A short hash of the recipe as written (and its model/data labels): resume needs the same."""
    text = json.dumps([source, labels], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """What finished in one scratch folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.private = folder / ".resume"
        self.stages = self.private / "stages"

    def rows(self) -> dict[str, dict[str, Any]]:
        """The metrics row of every finished stage, by name."""
        rows = {}
        for path in sorted(self.stages.glob("*.json")):
            try:
                row = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{str(path)!r} cannot be read ({exc}); rerun without "
                                      "--resume to start over.") from None
            if isinstance(row, dict) and (self.folder / str(row.get("onnx"))).is_file():
                rows[path.stem] = row
        return rows

    def checkpoints(self, stage: str) -> contextlib.AbstractContextManager[None]:
        """Training inside keeps per-epoch checkpoints for `stage`."""
        return checkpoints(self.private / "checkpoints" / stage)

    def finish(self, stage: str, model: nn.Module, row: dict[str, Any]) -> None:
        """Record a finished stage: its weights, then its row (the row marks it finished)."""
        from safetensors.torch import save

        self.stages.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
                 if isinstance(v, torch.Tensor)}
        try:
            data = save(state)
        except (ValueError, TypeError, RuntimeError):
            data = None  # a dtype safetensors lacks: the replayed stage is trusted as it is
        if data is not None:
            write_bytes(self.stages / f"{stage}.safetensors", data)
        write_text(self.stages / f"{stage}.json", json.dumps(row, default=str))

    def restore(self, stage: str, model: nn.Module) -> None:
        """Give a replayed stage's model exactly the weights the finished stage had."""
        from safetensors.torch import load_file

        path = self.stages / f"{stage}.safetensors"
        if not path.is_file():
            return
        try:
            result = model.load_state_dict(load_file(str(path)), strict=False)
            problem = result.unexpected_keys
        except (RuntimeError, OSError, ValueError) as exc:
            problem = [str(exc).splitlines()[0][:200]]
        if problem:
            raise CheckpointError(f"stage {stage} could not be rebuilt as it finished "
                                  f"({', '.join(problem[:3])}); rerun without --resume.")

    def resumable(self) -> bool:
        return any(self.stages.glob("*.json")) or any(
            (self.private / "checkpoints").glob("*/*.pt"))


@contextlib.contextmanager
def scratch(out: Path, key: str, resume: bool) -> Iterator[Journal]:
    """The scratch folder of the run writing `out`, locked against a second run.

    Without `resume` it starts empty; with it, what an interrupted run of the same recipe left
    is kept. On success the caller has published it, and it is removed; on failure it is kept
    when it holds finished work (to resume), else removed."""
    folder = _prepare(out)
    lock = _lock(folder, out)
    try:
        journal = Journal(folder)
        _claim(journal, key, resume)
        yield journal
    except BaseException:
        if not journal.resumable():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    else:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(lock)


def _prepare(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output directory {str(out)!r} exists and is not a directory.")
    if out.is_dir() and not os.access(out, os.W_OK):
        raise OutputError(f"output directory {str(out)!r} cannot be written: permission denied.")
    folder = scratch_path(out)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output directory {str(out)!r} cannot be written: "
                          f"{exc.strerror or exc}.") from None
    return folder


def _lock(folder: Path, out: Path) -> int:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"another `edgeopt optimize` is writing {str(out)!r} (its work is in "
                          f"{str(folder)!r}); wait for it or choose another --out.") from None
    return fd


def _claim(journal: Journal, key: str, resume: bool) -> None:
    """Check (resume) or reset (fresh run) the folder, then record the recipe's key."""
    run_file = journal.private / "run.json"
    if resume:
        check_recipe(journal.folder, key)
    else:
        for item in journal.folder.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    journal.private.mkdir(exist_ok=True)
    write_text(run_file, json.dumps({"recipe_key": key}))


def check_recipe(folder: Path, key: str) -> None:
    """Refuse to resume the interrupted run in scratch folder `folder` with another recipe."""
    run_file = folder / ".resume" / "run.json"
    if not run_file.is_file():
        return
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8")).get("recipe_key")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != key:
        raise ConfigError(f"--resume: the interrupted run in {str(folder)!r} was made with a "
                          "different recipe; pass the recipe it was started with, or rerun "
                          "without --resume to start over.")


def publish(folder: Path, out: Path) -> None:
    """Move the run's files from `folder` into `out` as one rename.

    Files already in an existing `out` that this run does not write are carried over."""
    staging = folder / ".publish"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for item in folder.iterdir():
        if item.name not in _PRIVATE:
            _link(item, staging / item.name)
    if out.is_dir():
        for item in out.iterdir():
            if not (staging / item.name).exists():
                _link(item, staging / item.name)
        previous = folder / ".previous"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(out, previous)
    os.replace(staging, out)


def _link(src: Path, dst: Path) -> None:
    """A hard link (no copy, the source stays for a resume), or a copy across file systems."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def disk_error(exc: OSError, folder: Path) -> OutputError | None:
    """An OutputError for a full, read-only or forbidden disk; None for other OSErrors."""
    ours = str(exc.filename or "").startswith(str(folder.parent))
    if exc.errno not in _DISK_ERRORS and not (exc.errno in _DENIED and ours):
        return None
    return OutputError(f"the run could not be written to {str(folder.parent)!r}: "
                       f"{exc.strerror or os.strerror(exc.errno)}; free space or choose another "
                       "--out, then rerun with --resume.")
