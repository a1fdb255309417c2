"""Quantization tests run single-threaded: tiny models gain nothing from threads, and on a
shared machine extra threads spin and slow everything down."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
