"""Calibration observers: collect activation statistics, then propose a clipping range.

Observers only accumulate statistics; choosing the range from them is a pure function
(`percentile_range`, `entropy_range`, `mse_range`) that the tests check against naive references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from edgeopt.quantization.primitives import choose_qparams, fake_quantize


class Observer(Protocol):
    """Sees every calibration batch of one tensor, then proposes its (min, max) range."""

    def update(self, x: torch.Tensor) -> None: ...

    def range(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class MinMaxObserver:
    """The running minimum and maximum over all calibration batches."""

    def __init__(self) -> None:
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        self.min_val = low if self.min_val is None else torch.minimum(self.min_val, low)
        self.max_val = high if self.max_val is None else torch.maximum(self.max_val, high)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None or self.max_val is None:
            raise RuntimeError("observer saw no data")
        return self.min_val, self.max_val


class MovingAverageObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max (less sensitive to one outlier)."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = low, high
            return
        self.min_val = self.min_val + self.momentum * (low - self.min_val)
        self.max_val = self.max_val + self.momentum * (high - self.max_val)


class HistogramObserver:
    """A fixed number of bins over the running range; re-binned when the range grows."""

    def __init__(self, choose: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]],
                 bins: int = 2048) -> None:
        self.choose = choose
        self.bins = bins
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.low: float | None = None
        self.high: float | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        low, high = float(x.min()), float(x.max())
        if self.low is None or self.high is None:
            self.low, self.high = low, max(high, low + 1e-8)
        elif low < self.low or high > self.high:
            self._rebin(min(low, self.low), max(high, self.high))
        self.hist += torch.histc(x, self.bins, self.low, self.high).double()

    def _rebin(self, low: float, high: float) -> None:
        """Move old counts to the new bins by their centers (the usual streaming approximation)."""
        assert self.low is not None and self.high is not None
        old_edges = torch.linspace(self.low, self.high, self.bins + 1, dtype=torch.float64)
        centers = (old_edges[:-1] + old_edges[1:]) / 2
        width = (high - low) / self.bins
        index = torch.clamp(((centers - low) / width).long(), 0, self.bins - 1)
        hist = torch.zeros_like(self.hist).index_add_(0, index, self.hist)
        self.hist, self.low, self.high = hist, low, high

    def edges(self) -> torch.Tensor:
        assert self.low is not None and self.high is not None
        return torch.linspace(self.low, self.high, self.bins + 1, dtype=torch.float64)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.low is None:
            raise RuntimeError("observer saw no data")
        low, high = self.choose(self.hist, self.edges())
        return torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)


@torch.no_grad()
def percentile_range(hist: torch.Tensor, edges: torch.Tensor, percentile: float
                     ) -> tuple[float, float]:
    """Clip at the given two-sided percentile of the histogram (e.g. 99.99)."""
    cdf = torch.cumsum(hist, 0) / hist.sum()
    tail = (100.0 - percentile) / 100.0
    lo_bin = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
    hi_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype)))
    return float(edges[min(lo_bin, len(hist) - 1)]), float(edges[min(hi_bin + 1, len(hist))])


@torch.no_grad()
def mse_range(hist: torch.Tensor, edges: torch.Tensor, qmin: int, qmax: int, steps: int = 100
              ) -> tuple[float, float]:
    """The shrunk range [a*min, a*max] that minimizes the histogram's expected squared error."""
    centers = ((edges[:-1] + edges[1:]) / 2).float()
    weights = hist.float()
    best, best_err = (float(edges[0]), float(edges[-1])), float("inf")
    for alpha in torch.linspace(1.0, 0.05, steps):
        low, high = alpha * edges[0].float(), alpha * edges[-1].float()
        scale, zp = choose_qparams(low, high, qmin, qmax, symmetric=False)
        err = float((weights * (fake_quantize(centers, scale, zp, qmin, qmax) - centers) ** 2).sum())
        if err < best_err:
            best, best_err = (float(low), float(high)), err
    return best


@torch.no_grad()
def entropy_range(hist: torch.Tensor, edges: torch.Tensor, levels: int = 256
                  ) -> tuple[float, float]:
    """TensorRT-style KL-divergence calibration, applied to each side of zero separately.

    For each candidate threshold, the clipped reference distribution P (outliers folded into
    the last bin) is compared with its `levels`-level quantized version Q; the threshold with the
    smallest KL(P || Q) wins. Each side gets its own threshold: a shared one clipped the dense
    negative floor of normalized inputs (e.g. MNIST background) and wrecked accuracy.
    """
    centers = (edges[:-1] + edges[1:]) / 2
    high = _side_threshold(hist * (centers > 0), centers.clamp(min=0), levels)
    low = _side_threshold(hist * (centers < 0), (-centers).clamp(min=0), levels)
    return max(-low, float(edges[0])) if float(edges[0]) < 0 else float(edges[0]), min(
        high, float(edges[-1]))


def _side_threshold(hist: torch.Tensor, magnitudes: torch.Tensor, levels: int) -> float:
    """The KL-optimal clipping magnitude of one side's histogram (0 when the side is empty)."""
    top = float(magnitudes.max())
    if top <= 0 or float(hist.sum()) <= 0:
        return 0.0
    bins = len(hist)
    index = torch.clamp((magnitudes / top * bins).long(), 0, bins - 1)
    magnitude = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, hist.double())
    # Zero is exact on the grid: the spike of zeros (ReLU outputs) must not drive the choice,
    # or spreading it over a level's bins dominates KL and the smallest threshold always wins.
    magnitude[0] = 0.0
    best_kl, best_i = float("inf"), bins
    for i in range(max(levels, 1), bins + 1, max(1, bins // 256)):
        kl = _kl_for_threshold(magnitude, i, levels)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return top * best_i / bins


def _kl_for_threshold(magnitude: torch.Tensor, i: int, levels: int) -> float:
    reference = magnitude[:i].clone()
    reference[-1] += magnitude[i:].sum()
    nonzero = reference > 0
    # quantize the first i bins into `levels` groups, spread each group's mass over its nonzero bins
    group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
    mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, magnitude[:i])
    count = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero.double())
    candidate = torch.where(nonzero, mass[group] / count[group].clamp(min=1), 0.0)
    p = reference / reference.sum()
    q = candidate / max(float(candidate.sum()), 1e-12)
    mask = p > 0
    q = torch.clamp(q, min=1e-12)
    return float((p[mask] * torch.log(p[mask] / q[mask])).sum())


# QuantConfig.calibration -> observer factory (percentile, qmin, qmax); extend to add one.
CALIBRATORS: dict[str, Callable[[float, int, int], Observer]] = {
    "minmax": lambda pct, qmin, qmax: MinMaxObserver(),
    "moving_average": lambda pct, qmin, qmax: MovingAverageObserver(),
    "percentile": lambda pct, qmin, qmax: HistogramObserver(
        lambda h, e: percentile_range(h, e, pct)),
    "entropy": lambda pct, qmin, qmax: HistogramObserver(
        lambda h, e: entropy_range(h, e, qmax - qmin + 1)),
    "mse": lambda pct, qmin, qmax: HistogramObserver(lambda h, e: mse_range(h, e, qmin, qmax)),
}
OBSERVERS = tuple(CALIBRATORS)


def make_observer(calibration: str, *, percentile: float = 99.99, qmin: int = 0, qmax: int = 255
                  ) -> Observer:
    """The observer for a QuantConfig.calibration value."""
    if calibration not in CALIBRATORS:
        raise ValueError(f"unknown calibration {calibration!r}; valid: {', '.join(CALIBRATORS)}")
    return CALIBRATORS[calibration](percentile, qmin, qmax)
