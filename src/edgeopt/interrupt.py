"""Ctrl-C that a run cannot lose.

CPython drops an exception raised in a weakref callback or a `__del__` that runs during garbage
collection ("Exception ignored in ..."). A KeyboardInterrupt from Ctrl-C that lands there is
lost, and the run goes on to the end (measured: SIGINT during an import that triggered a
collection in torch.utils.weak). So the CLI's handler also records the signal, and the runner
raises it again at its next safe point (each stage, each epoch checkpoint, before publishing).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_pending = False


def _record_and_raise(signum: int, frame: Any) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_recorded() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered for `check`."""
    global _pending
    _pending = False
    previous = signal.getsignal(signal.SIGINT)
    # signals reach the main thread only; a process started with Ctrl-C ignored (nohup, a
    # background job) keeps ignoring it, as Python itself does
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False


def check() -> None:
    """Raise the KeyboardInterrupt that a Ctrl-C caused, if it was swallowed on its way."""
    if _pending:
        raise KeyboardInterrupt
