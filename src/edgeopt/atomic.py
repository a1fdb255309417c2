"""Atomic file output: readers never see a half-written file, failures leave nothing behind.

Every writer stages into a temporary name in the *same* directory (so the final `os.replace` is
an atomic rename on one file system) and removes the temporary on any error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgeopt.errors import OutputError, invalid

_TMP_PREFIX = ".edgeopt-tmp-"


def ensure_writable_dir(directory: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Create `directory` (with parents) and prove a file can be written there.

    Called before expensive work so a bad location fails in milliseconds, not after an export.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{what} directory {str(path)!r} cannot be written ({exc.strerror or exc}); "
            "choose a writable location."
        ) from exc
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` only on success."""
    if mode not in ("w", "wb"):
        raise invalid("atomic_open.mode", "'w' or 'wb'", mode)
    target = Path(path)
    ensure_writable_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write `data` to `path`; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically write `text` to `path`; returns the path."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging directory; on success its contents land in `directory`, else nothing does.

    A new `directory` appears in one rename. Into an existing one, each staged file is moved with
    `os.replace` (unrelated files there are kept), so no file is ever seen half-written.
    """
    target = Path(directory)
    ensure_writable_dir(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    try:
        yield staging
        if target.exists():
            _merge_into(staging, target)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        destination = dst / entry.name
        if entry.is_dir() and destination.is_dir():
            _merge_into(entry, destination)
        else:
            if destination.is_dir():  # a staged file replaces a stale folder of the same name
                shutil.rmtree(destination)
            os.replace(entry, destination)
