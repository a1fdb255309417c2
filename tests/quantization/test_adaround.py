import time

import torch
import torch.nn.functional as F
from qhelpers import correlated_layer

from edgeopt.quantization.adaround import _initial_v, adaround, rectified_sigmoid


def test_initial_v_reproduces_the_fraction():
    rest = torch.rand(1000)
    assert torch.allclose(rectified_sigmoid(_initial_v(rest)), rest, atol=1e-3)


def test_adaround_lowers_layer_error_versus_nearest():
    w, scale, zero, x, y = correlated_layer()
    result = adaround(w, scale, zero, -7, 7, lambda ww, xx: F.linear(xx, ww), x, y,
                      iterations=400, channel_dim=-1, generator=torch.Generator().manual_seed(0))
    nearest = torch.round(w / scale)
    assert result.loss < 0.8 * result.loss_nearest
    # every weight is rounded down or up from its float value, never further
    assert bool(((result.q - torch.floor(w / scale)).abs() <= 1).all())
    assert int(result.q.abs().max()) <= 7 and not torch.equal(result.q, nearest)
    error = F.linear(x, result.q * scale) - y
    assert abs(float(error.pow(2).sum(-1).mean()) - result.loss) < 1e-3 * result.loss


def test_time_budget_stops_early_and_never_does_worse_than_nearest():
    w, scale, zero, x, y = correlated_layer(1)
    start = time.monotonic()
    result = adaround(w, scale, zero, -7, 7, lambda ww, xx: F.linear(xx, ww), x, y,
                      iterations=100_000, channel_dim=-1, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - start < 5.0 and result.iterations < 100_000
    assert result.loss <= result.loss_nearest


def test_time_limit_sets_the_iteration_count_from_timed_iterations():
    w, scale, zero, x, y = correlated_layer(2)
    start = time.monotonic()
    result = adaround(w, scale, zero, -7, 7, lambda ww, xx: F.linear(xx, ww), x, y,
                      iterations=1_000_000, channel_dim=-1, time_limit=0.3,
                      generator=torch.Generator().manual_seed(0))
    assert time.monotonic() - start < 5.0
    assert 10 <= result.iterations < 1_000_000  # the floor, and far below the ceiling
    assert result.loss <= result.loss_nearest
    few = adaround(w, scale, zero, -7, 7, lambda ww, xx: F.linear(xx, ww), x, y,
                   iterations=1_000_000, channel_dim=-1, time_limit=0.0)
    assert few.iterations == 10  # no time: the floor
    unlimited = adaround(w, scale, zero, -7, 7, lambda ww, xx: F.linear(xx, ww), x, y,
                         iterations=40, channel_dim=-1)
    assert unlimited.iterations == 40
