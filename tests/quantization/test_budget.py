import time

import pytest

from edgeopt.quantization.budget import (
    TimeBudget,
    fit_iterations,
    pass_samples,
    reconstruction_samples,
    rows_per_sample,
)


def test_reconstruction_samples_fit_the_capture_share_of_the_budget():
    # capturing one sample for every layer takes 0.5 s; a quarter of 480 s fits 240 samples
    assert reconstruction_samples(512, 0.5, None) == 512  # no budget: every sample
    assert reconstruction_samples(512, 0.5, 480.0) == 240
    assert reconstruction_samples(512, 1e-5, 480.0) == 512  # cheap: all of them
    assert reconstruction_samples(512, 100.0, 480.0) == 4  # never below the floor
    assert reconstruction_samples(3, 100.0, 480.0) == 3  # ... unless fewer exist


def test_rows_per_sample_caps_the_rows_of_a_layer():
    assert rows_per_sample(12544, 64, 16384) == 256
    assert rows_per_sample(49, 64, 16384) == 49  # all positions fit
    assert rows_per_sample(12544, 64, None) == 12544
    assert rows_per_sample(100, 1000, 16) == 1  # at least one row per sample


def test_pass_samples_fit_the_memory_of_one_forward_pass():
    assert pass_samples(30 << 20, limit=2 << 30) == 68
    assert pass_samples(3 << 30, limit=2 << 30) == 1  # always at least one


def test_fit_iterations_clamps_to_floor_and_ceiling():
    assert fit_iterations(0.01, 1.0, ceiling=1000) == 100
    assert fit_iterations(0.01, 100.0, ceiling=1000) == 1000
    assert fit_iterations(0.01, 0.0, ceiling=1000, floor=10) == 10
    assert fit_iterations(0.01, 0.0, ceiling=5, floor=10) == 5


def _budget(seconds, start=None):
    return TimeBudget(seconds, costs=[1.0, 3.0, 6.0], capture_per_sample=[0.01, 0.02, 0.08],
                      samples=100, start=time.monotonic() if start is None else start)


def test_time_budget_shares_by_cost_after_reserving_captures():
    budget = _budget(100.0)
    assert budget.room(0) == pytest.approx(100.0 - 11.0, abs=0.1)  # 100 samples x 0.11 s
    # half split over the 3 layers left, half by cost (1 of 10)
    assert budget.share(0) == pytest.approx((100.0 - 10.0) * (0.5 / 3 + 0.5 * 0.1), abs=0.1)
    assert budget.share(2) == pytest.approx(budget.room(3), abs=0.1)  # the last gets it all


def test_captures_a_little_slower_than_planned_change_nothing():
    budget = _budget(100.0)  # planned: 100 samples x 0.11 s, within a quarter of 100 s
    assert budget.samples_now(0) == 100 and budget.capture_scale() == 1.0
    budget.observe_capture(0, 1.5, 100)  # planned 1 s
    assert budget.capture_scale() == pytest.approx(1.5)
    assert budget.samples_now(1) == 100  # 100 x 0.15 s still fits the 23.5 s left for it
    assert budget.room(1) == pytest.approx(budget.left() - 15.0, abs=0.1)


def test_much_slower_captures_cut_the_samples_of_later_layers():
    budget = _budget(100.0)
    budget.observe_capture(0, 4.0, 100)  # 4x slower than planned
    assert budget.samples_now(1) == 52  # (25 - 4) s / (4 x 0.10 s per sample)
    assert budget.room(1) == pytest.approx(budget.left() - 52 * 0.4, abs=0.1)
    budget.observe_capture(1, 40.0, 52)  # far too slow: never below the floor
    assert budget.samples_now(2) == 4
    assert TimeBudget(None, [1.0], [1.0], 100).samples_now(0) == 100  # no budget: no cut


def test_time_budget_estimates_from_observed_work():
    budget = _budget(10.0)
    assert budget.estimate("adaround", 100.0) is None
    budget.observe("adaround", 2.0, 1000.0)
    assert budget.estimate("adaround", 100.0, 10) == pytest.approx(2.0)
    assert budget.estimate("gptq", 100.0) is None


def test_time_budget_spent_leaves_no_room_and_none_is_unlimited():
    spent = _budget(1.0, start=time.monotonic() - 5.0)
    assert spent.room(0) == 0.0 and spent.share(1) == 0.0
    unlimited = TimeBudget(None, costs=[1.0], capture_per_sample=[0.0], samples=8)
    assert unlimited.room(0) is None and unlimited.share(0) is None
