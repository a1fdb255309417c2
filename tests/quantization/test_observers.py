import numpy as np
import pytest
import torch

from edgeopt.quantization.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageObserver,
    entropy_range,
    make_observer,
    mse_range,
    percentile_range,
)
from edgeopt.quantization.primitives import choose_qparams, fake_quantize


def batches(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1000, generator=g) * (i + 1) for i in range(n)]


def test_minmax_matches_global_extremes():
    obs = MinMaxObserver()
    data = batches()
    for b in data:
        obs.update(b)
    lo, hi = obs.range()
    assert float(lo) == float(torch.cat(data).min()) and float(hi) == float(torch.cat(data).max())


def test_moving_average_is_an_ema_of_batch_extremes():
    obs, data = MovingAverageObserver(momentum=0.5), batches()
    for b in data:
        obs.update(b)
    ref = float(data[0].max())
    for b in data[1:]:
        ref += 0.5 * (float(b.max()) - ref)
    assert float(obs.range()[1]) == pytest.approx(ref, rel=1e-5)


def test_histogram_keeps_every_count_when_range_grows():
    obs = HistogramObserver(lambda h, e: (float(e[0]), float(e[-1])), bins=256)
    for b in batches():
        obs.update(b)
    assert float(obs.hist.sum()) == 4000
    lo, hi = obs.range()
    assert float(lo) == pytest.approx(float(torch.cat(batches()).min()), rel=1e-5)


def test_percentile_clips_the_requested_tail_fraction():
    x = torch.cat(batches())
    obs = HistogramObserver(lambda h, e: percentile_range(h, e, 99.0), bins=2048)
    obs.update(x)
    lo, hi = (float(v) for v in obs.range())
    # naive reference: the fraction of samples outside the range is 1 % on each side
    assert float((x < lo).float().mean()) == pytest.approx(0.01, abs=0.002)
    assert float((x > hi).float().mean()) == pytest.approx(0.01, abs=0.002)
    assert hi == pytest.approx(np.percentile(x.numpy(), 99.0), rel=0.02)


def _error(x, lo, hi):
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), 0, 255, symmetric=False)
    return float(((fake_quantize(x, scale, zp, 0, 255) - x) ** 2).mean())


def test_mse_range_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g), torch.tensor([40.0, -35.0])])
    obs = HistogramObserver(lambda h, e: mse_range(h, e, 0, 255))
    obs.update(x)
    lo, hi = (float(v) for v in obs.range())
    assert hi < 40.0
    assert _error(x, lo, hi) < _error(x, float(x.min()), float(x.max()))
    # and it is the best of a brute-force scan over the same shrink factors (within 5 %)
    brute = min(_error(x, a * float(x.min()), a * float(x.max())) for a in np.linspace(1, 0.05, 100))
    assert _error(x, lo, hi) <= brute * 1.05


def test_entropy_clips_outliers_of_a_relu_distribution():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(50000, generator=g))
    x[:5] = 30.0
    obs = make_observer("entropy")
    obs.update(x)
    lo, hi = (float(v) for v in obs.range())
    assert lo == pytest.approx(0.0, abs=1e-6)
    assert 2.0 < hi < 30.0
    bulk = x[5:]  # KL ignores the outliers by design: the bulk is quantized more finely
    assert _error(bulk, lo, hi) < _error(bulk, 0.0, 30.0) / 10


def test_entropy_range_pure_function_keeps_full_range_for_uniform_data():
    hist = torch.ones(2048, dtype=torch.float64)
    edges = torch.linspace(0, 1, 2049, dtype=torch.float64)
    lo, hi = entropy_range(hist, edges, 256)
    assert hi > 0.9


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "entropy", "mse"])
def test_every_calibrator_brackets_the_bulk_of_the_data(name):
    obs = make_observer(name)
    for b in batches():
        obs.update(b)
    lo, hi = (float(v) for v in obs.range())
    assert lo < -1.0 and hi > 1.0


def test_entropy_keeps_a_dense_negative_floor():
    # normalized images: most values sit at one negative background level, the rest spread up
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.full((40000,), -0.42), torch.rand(10000, generator=g) * 2.8])
    obs = make_observer("entropy")
    obs.update(x)
    lo, hi = (float(v) for v in obs.range())
    assert lo <= -0.42 + 1e-3  # the background is not clipped
    assert hi > 1.0
