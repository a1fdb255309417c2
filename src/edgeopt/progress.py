"""Progress bars from one factory, so that a quiet run (`--quiet`, `progress=False`) silences
the bars of every technique it calls, not only its own (a quiet `edgeopt optimize` used to print
the calibration and QAT bars)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_quiet_depth = 0


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Within this block (when `enabled`) every bar made by `bar` is disabled."""
    global _quiet_depth
    if not enabled:
        yield
        return
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1


def is_quiet() -> bool:
    return _quiet_depth > 0


def bar(iterable: Any = None, **kwargs: Any) -> Any:
    """tqdm.auto.tqdm(iterable, **kwargs), disabled inside `quiet()`."""
    from tqdm.auto import tqdm

    if _quiet_depth:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
