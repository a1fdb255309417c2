"""Shared test setup: no test may write to the user's real cache folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Shared test modules (`helpers`, and per-folder ones such as `pruning_models`) import by name
# under pytest's importlib mode, which test files sharing a base name need.
for _folder in [Path(__file__).parent, *sorted(Path(__file__).parent.iterdir())]:
    if _folder.is_dir() and not _folder.name.startswith((".", "_")) and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # One cache per session: tests that train zoo models share it, nothing leaks to ~/.cache.
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeopt-cache"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning
    # OpenMP threads made training tens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
