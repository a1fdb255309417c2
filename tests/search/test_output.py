"""The Pareto front is over the study's objectives only."""

from edgeopt.search.output import pareto_front, summary


def _point(number, accuracy, flash, latency):
    return {"number": number, "accuracy": accuracy, "flash_bytes": flash, "ram_bytes": 100,
            "latency_ms": latency, "fits": True}


def test_a_recorded_latency_that_is_no_objective_keeps_no_point_on_the_front():
    # an MCU search without a latency budget records latency but does not optimize it
    slow_better = _point(0, 0.9, 1000, 5.0)
    fast_worse = _point(1, 0.8, 1200, 1.0)
    unbudgeted = ("accuracy", "flash_bytes", "ram_bytes")
    assert [p["number"] for p in pareto_front([slow_better, fast_worse], unbudgeted)] == [0]
    with_latency = (*unbudgeted, "latency_ms")
    assert [p["number"] for p in pareto_front([slow_better, fast_worse], with_latency)] == [0, 1]
    content = summary([slow_better, fast_worse], {}, None, unbudgeted)
    assert content["objectives"] == list(unbudgeted) and len(content["pareto"]) == 1
