"""Shared test setup: no test may write to the user's real cache folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # One cache per session: tests that train zoo models share it, nothing leaks to ~/.cache.
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeopt-cache"))
