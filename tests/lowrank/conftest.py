"""Run these tests on one intra-op thread: on a busy 2-core machine, OpenMP threads spinning
against other processes make tiny-model training tens of times slower."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
