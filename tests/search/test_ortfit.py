"""The whole-model x86-ort latency predictor: features counted by hand, the fit against known
coefficients (no ONNX Runtime timing here: bench/bench_search.py latency measures it)."""

import json
import random

import pytest
import torch
from torch import nn

from edgeopt.search import ortfit
from edgeopt.search.space import FLOAT, Policy


class _Table:
    """A layer table whose every layer takes 0.01 ms beyond a 0.005 ms call."""

    def call_ms(self) -> float:
        return 0.005

    def ms(self, key: str) -> float:
        assert json.loads(key)[0] in ("conv", "gemm")
        return 0.015


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = y + self.conv2(y)
        return self.fc(self.pool(y).flatten(1))


def test_features_count_operators_traffic_and_float_boundaries():
    model, example = _Residual().eval(), torch.randn(1, 2, 5, 5)
    int8 = ortfit.features(model, Policy(bits={}, keep={}), example, _Table())
    assert int8["call"] == 1 and int8["int8_layers"] == 3 and int8["float_layers"] == 0
    assert int8["compute"] == pytest.approx(3 * 0.01)
    assert int8["other_ops"] == 2  # the add and the pooling (relu and flatten run in place)
    # written elements: conv1 100, conv2 100, add 100, pool 4, fc 3
    assert int8["elements"] == 307 and int8["boundary"] == 0
    mixed = ortfit.features(model, Policy(bits={"conv2": FLOAT}, keep={}), example, _Table())
    assert mixed["int8_layers"] == 2 and mixed["float_layers"] == 1
    assert mixed["boundary"] == 200  # conv2's input and output cross int8 <-> float


def test_fit_recovers_non_negative_coefficients_from_exact_timings():
    rng = random.Random(0)
    truth = {"call": 0.03, "compute": 1.2, "int8_layers": 0.004, "float_layers": 0.0,
             "other_ops": 0.002, "elements": 2e-6, "boundary": 5e-6}
    rows = []
    for _ in range(40):
        feats = {"call": 1.0, "compute": rng.uniform(0.01, 0.5), "int8_layers": rng.randint(2, 20),
                 "float_layers": rng.randint(0, 5), "other_ops": rng.randint(0, 10),
                 "elements": rng.uniform(1e3, 1e5), "boundary": rng.uniform(0, 1e4)}
        rows.append((feats, ortfit.predict(truth, feats)))
    fitted = ortfit.fit(rows)
    assert all(v >= 0 for v in fitted.values())
    for feats, ms in rows:
        assert ortfit.predict(fitted, feats) == pytest.approx(ms, rel=1e-6)
