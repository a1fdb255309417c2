"""Ctrl-C survives being raised where CPython swallows exceptions (garbage-collection callbacks)."""

import gc
import signal
import weakref

import pytest

from edgeopt import interrupt


class _Node:
    pass


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler, whatever the test runner's (a background job ignores it)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def test_an_ignored_ctrl_c_stays_ignored():
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.sigint_recorded():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, saved)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_in_a_weakref_callback_is_raised_at_the_next_check(default_sigint):
    with interrupt.sigint_recorded():
        interrupt.check()  # nothing pending
        node = _Node()
        # the signal lands inside a weakref callback, as it did during an import's collection
        ref = weakref.ref(node, lambda _: signal.raise_signal(signal.SIGINT))
        del node
        gc.collect()
        assert ref() is None  # the callback ran and its KeyboardInterrupt was swallowed
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    interrupt.check()  # leaving the block forgets it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_outside_callbacks_still_raises_at_once(default_sigint):
    with interrupt.sigint_recorded(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
