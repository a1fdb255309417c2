"""Task metrics against naive per-sample loops."""

import numpy as np
import pytest

from edgeopt.errors import DataError
from edgeopt.runtime import scores


def test_metrics_match_naive_loops():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7)).astype(np.float32)
    b = a + rng.normal(scale=0.5, size=a.shape).astype(np.float32)
    labels = rng.integers(0, 7, 50)
    assert scores.top1(a, labels) == pytest.approx(
        sum(int(np.argmax(r) == y) for r, y in zip(a, labels)) / 50)
    assert scores.agreement(a, b) == pytest.approx(
        sum(int(np.argmax(r) == np.argmax(s)) for r, s in zip(a, b)) / 50)
    naive = np.mean([r @ s / (np.linalg.norm(r) * np.linalg.norm(s)) for r, s in zip(a, b)])
    assert scores.cosine(a, b) == pytest.approx(naive, rel=1e-6)
    assert scores.mse(a, b) == pytest.approx(float(np.mean((a - b) ** 2)), rel=1e-6)


def test_score_picks_labels_or_reference():
    out = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert scores.score("top1", out, None, np.array([1, 1])) == 0.5
    assert scores.score("agreement", out, out[::-1], None) == 0.0
    assert scores.score("mse", out, out, np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(
        0.025)  # float labels: regression targets
    assert scores.score("cosine", out, out, None) == pytest.approx(1.0)
    with pytest.raises(DataError, match="needs labels"):
        scores.score("top1", out, out, None)
    with pytest.raises(DataError, match="cannot be compared"):
        scores.score("cosine", out, out[:1], None)


def test_single_logit_is_a_binary_decision():
    assert scores.agreement(np.array([[0.3], [-2.0]]), np.array([[1.0], [0.5]])) == 0.5
