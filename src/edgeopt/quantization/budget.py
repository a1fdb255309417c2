"""Time budgets for the layer-by-layer refinement (AdaRound, GPTQ): pure arithmetic.

The budget covers the whole refinement: capturing each layer's inputs (a forward pass up to
the layer, so deeper layers cost more) and optimizing its rounding. Capture is sized first
(how many calibration samples to use, from one forward pass timed layer by layer), then each
layer gets a share of what is left: half split equally, half in proportion to its cost per
iteration (weights x output positions kept per sample); the iteration count itself comes
from timing the first few iterations of the layer. Estimates are corrected by what is
observed as the layers go.
"""

from __future__ import annotations

import dataclasses
import math
import time

CAPTURE_SHARE = 0.25  # of the budget, at most, for capturing layer inputs
MIN_SAMPLES = 4  # reconstruct from at least this many samples (a conv sample has many rows)
MIN_ITERATIONS = 10  # fewer AdaRound iterations than this: keep nearest rounding instead
PROBE_ITERATIONS = 5  # timed before the iteration count is fixed
EQUAL_SHARE = 0.5  # of the time for optimizing, split equally over layers (the rest by cost)
PASS_BYTES = 2 << 30  # the samples refined from go through the quantized model in one pass


def reconstruction_samples(available: int, capture_seconds: float, budget: float | None,
                           share: float = CAPTURE_SHARE, floor: int = MIN_SAMPLES) -> int:
    """How many calibration samples to capture, when capturing one sample for every layer
    takes `capture_seconds`: at most `share` of `budget` (all of them without a budget;
    never fewer than `floor` when available)."""
    if budget is None:
        return available
    fit = math.floor(share * budget / capture_seconds) if capture_seconds > 0 else available
    return max(min(available, fit), min(floor, available))


def pass_samples(bytes_per_sample: int, limit: int = PASS_BYTES) -> int:
    """Samples that one forward pass can hold in `limit` bytes (at least one)."""
    return max(1, limit // max(bytes_per_sample, 1))


def rows_per_sample(positions: int, samples: int, max_rows: int | None) -> int:
    """Output positions to keep per sample so a layer holds at most `max_rows` rows."""
    if max_rows is None:
        return positions
    return max(1, min(positions, max_rows // max(samples, 1)))


def fit_iterations(seconds_per_iteration: float, seconds: float, *, ceiling: int,
                   floor: int = MIN_ITERATIONS) -> int:
    """Iterations that fit in `seconds`, within [floor, ceiling]."""
    if seconds_per_iteration <= 0:
        return ceiling
    return int(min(ceiling, max(floor, math.floor(seconds / seconds_per_iteration + 1e-9))))


@dataclasses.dataclass
class TimeBudget:
    """Seconds left for the refinement, shared over layers by cost. `seconds=None`: no limit.

    What each kind of work ("capture", "adaround", "gptq") really costs is observed as it
    runs: captures that run slower than planned cut the samples captured for later layers,
    and layers whose minimum work no longer fits are left out (nearest rounding)."""

    seconds: float | None
    costs: list[float]  # optimization work per iteration, per layer, in order
    capture_per_sample: list[float]  # planned seconds to capture one sample, per layer
    samples: int  # planned samples to capture per layer
    start: float = dataclasses.field(default_factory=time.monotonic)
    rates: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def left(self) -> float | None:
        if self.seconds is None:
            return None
        return self.seconds - (time.monotonic() - self.start)

    def capture_scale(self) -> float:
        """Observed over planned capture time (1 before any capture)."""
        spent, planned = self.rates.get("capture", (0.0, 0.0))
        return spent / planned if planned > 0 else 1.0

    def samples_now(self, first: int) -> int:
        """Samples to capture for layers `first`..: the planned ones, unless captures run so
        much slower than planned that they would take more than their share of the budget."""
        if self.seconds is None:
            return self.samples
        spent, _ = self.rates.get("capture", (0.0, 0.0))
        per_sample = self.capture_scale() * sum(self.capture_per_sample[first:])
        if per_sample <= 0:
            return self.samples
        fit = math.floor(max(0.0, CAPTURE_SHARE * self.seconds - spent) / per_sample)
        return max(min(self.samples, fit), min(MIN_SAMPLES, self.samples))

    def room(self, first: int) -> float | None:
        """Seconds left for optimizing, once the captures of layers `first`.. are paid."""
        left = self.left()
        if left is None:
            return None
        per_sample = self.capture_scale() * sum(self.capture_per_sample[first:])
        return max(0.0, left - per_sample * self.samples_now(first))

    def share(self, index: int) -> float | None:
        """Seconds for optimizing layer `index` (captured): half of the room split equally
        over the layers left (small layers are dominated by fixed costs per step, and what
        they leave unused goes to the next), half by cost."""
        room = self.room(index + 1)
        if room is None:
            return None
        equal, cost = 1.0 / (len(self.costs) - index), sum(self.costs[index:])
        by_cost = self.costs[index] / cost if cost > 0 else equal
        return room * (EQUAL_SHARE * equal + (1 - EQUAL_SHARE) * by_cost)

    def observe_capture(self, index: int, seconds: float, samples: int) -> None:
        self.observe("capture", seconds, self.capture_per_sample[index] * samples)

    def observe(self, kind: str, seconds: float, units: float) -> None:
        """Record that `units` of work of `kind` took `seconds` (for estimate())."""
        spent, done = self.rates.get(kind, (0.0, 0.0))
        self.rates[kind] = (spent + seconds, done + units)

    def estimate(self, kind: str, units: float, minimum: float = 1.0) -> float | None:
        """Seconds that `units` x `minimum` of work of `kind` should take, from what was
        observed; None before any observation."""
        spent, done = self.rates.get(kind, (0.0, 0.0))
        return spent / done * units * minimum if done > 0 else None
