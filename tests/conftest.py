"""Shared test setup: no test may write to the user's real cache folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `from helpers import ...` works under any pytest import mode (prepend or importlib).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # One cache per session: tests that train zoo models share it, nothing leaks to ~/.cache.
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeopt-cache"))
