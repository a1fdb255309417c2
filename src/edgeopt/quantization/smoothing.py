"""Where and how much to smooth activation outliers (SmoothQuant), chosen by measurement.

A transformer's Linear inputs carry outliers: a few channels, mostly in one token ([CLS] or the
first token), are 10-20x larger than the rest, so one 8-bit scale per tensor leaves the other
values a handful of levels (MiniLM: 20-25 dB on the feed-forward inputs). SmoothQuant divides
those channels by s and multiplies the weights' input columns by s; how far to go (alpha) is a
trade between activation and weight error that differs per layer (MiniLM: 0.6 to 1.0, and the
common 0.5 made it worse than not smoothing at all).

So for every group of Linears sharing an input, one pass over the calibration data records the
channel ranges per sample and a subsample of rows; each alpha of a grid is then scored by the
group's output error with the weights quantized per channel and the input per tensor (each
sample's own range for dynamic quantization, the calibration range for static); the best one is
kept only where it cuts the error by at least `MIN_GAIN` (a Mul that is not folded costs time).

With `QuantConfig.smoothquant=None` (the default) this runs for token-sequence inputs
([batch, tokens, features]) whenever calibration data is given; `True` smooths every group with
the fixed `advanced.smoothquant_alpha` instead, `False` never smooths.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.errors import DataError
from edgeopt.quantization.config import Method, QuantConfig, QuantSpec
from edgeopt.quantization.primitives import choose_qparams, fake_quantize, spec_range, weight_minmax
from edgeopt.quantization.smoothquant import linear_groups, rescale_groups, smoothing_factors

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MIN_GAIN = 2.0  # smooth a group only where its output error drops by at least this factor
ROWS_PER_GROUP = 512  # rows kept per group to score the alphas


def auto_wanted(config: QuantConfig, data: Any) -> bool:
    """Whether the default (smoothquant=None) looks for outliers: quantized activations and data."""
    return (config.smoothquant is None and data is not None and not config.data_free
            and config.method in (Method.PTQ, Method.DYNAMIC) and not config.awq)


@dataclasses.dataclass
class InputStats:
    """What one group's input looked like on the calibration data."""

    absmax: torch.Tensor  # per channel, over everything
    sample_min: list[torch.Tensor] = dataclasses.field(default_factory=list)  # [channels] each
    sample_max: list[torch.Tensor] = dataclasses.field(default_factory=list)
    rows: list[torch.Tensor] = dataclasses.field(default_factory=list)  # [kept, channels] each
    tokens: bool = False  # the input is a token sequence: [batch, tokens, features]

    def add(self, x: torch.Tensor, keep: int) -> None:
        flat = x.detach().float().reshape(x.shape[0], -1, x.shape[-1])  # [sample, rows, channel]
        self.absmax = torch.maximum(self.absmax, flat.abs().amax(dim=(0, 1)))
        self.sample_min.extend(flat.amin(dim=1))
        self.sample_max.extend(flat.amax(dim=1))
        step = max(1, flat.shape[1] // keep)
        self.rows.extend(flat[:, ::step][:, :keep])


@torch.no_grad()
def input_stats(gm: fx.GraphModule, leaders: list[str], batches: list[torch.Tensor]
                ) -> dict[str, InputStats]:
    """One pass over the calibration batches with a hook on the first Linear of every group."""
    samples = sum(int(b.shape[0]) for b in batches)
    keep = max(1, ROWS_PER_GROUP // max(samples, 1))
    found: dict[str, InputStats] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in found:
                found[name] = InputStats(torch.zeros(x.shape[-1]), tokens=x.dim() >= 3)
            found[name].add(x, keep)
        return record

    handles = [gm.get_submodule(n).register_forward_pre_hook(hook(n)) for n in leaders]
    try:
        for batch in batches:
            try:
                gm(batch)
            except RuntimeError as exc:
                raise DataError(f"calibration data of shape {tuple(batch.shape)} does not fit "
                                f"the model: {str(exc).splitlines()[0]}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return found


def _fake_weight(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    qmin, qmax = spec_range(spec, is_weight=True)
    low, high = weight_minmax(weight, spec.granularity)
    scale, zero = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric)
    return fake_quantize(weight, scale, zero, qmin, qmax)


@torch.no_grad()
def group_error(stats: InputStats, weights: list[torch.Tensor], s: torch.Tensor,
                config: QuantConfig) -> float:
    """Relative squared error of the group's outputs when inputs / s and weights * s are
    quantized as `config` quantizes them: each sample with its own range (dynamic) or all with
    the calibration range (static)."""
    acts = config.activations or QuantSpec(symmetric=False, granularity="per_tensor")
    counts = torch.tensor([len(r) for r in stats.rows])
    low = (torch.stack(stats.sample_min) / s).amin(dim=1)  # per sample
    high = (torch.stack(stats.sample_max) / s).amax(dim=1)
    if config.method is not Method.DYNAMIC:
        low, high = low.min().expand_as(low), high.max().expand_as(high)
    qmin, qmax = spec_range(acts, is_weight=False)
    scale, zero = choose_qparams(low, high, qmin, qmax, symmetric=acts.symmetric)
    rows = torch.cat(stats.rows)
    scale, zero = (t.repeat_interleave(counts).reshape(-1, 1) for t in (scale, zero))
    inputs = fake_quantize(rows / s, scale, zero, qmin, qmax)
    noise = signal = 0.0
    for weight in weights:
        reference = rows @ weight.T
        noise += float((inputs @ _fake_weight(weight * s, config.weights).T - reference)
                       .pow(2).sum())
        signal += float(reference.pow(2).sum())
    return noise / max(signal, 1e-30)


def best_factors(stats: InputStats, layers: list[nn.Linear], config: QuantConfig
                 ) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The smoothing factors of the alpha with the lowest error, or None if none is worth it."""
    weights = [layer.weight.detach().float() for layer in layers]
    weight_absmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    before = group_error(stats, weights, torch.ones_like(stats.absmax), config)
    scored = []
    for alpha in ALPHAS:
        s = smoothing_factors(stats.absmax, weight_absmax, alpha)
        scored.append((group_error(stats, weights, s, config), alpha, s))
    error, alpha, s = min(scored, key=lambda item: item[0])
    if error * MIN_GAIN > before:
        return None
    return s, {"smoothquant_alpha": alpha, "smoothquant_error_before": before,
               "smoothquant_error_after": error}


def smooth_outliers(gm: fx.GraphModule, names: list[str], config: QuantConfig,
                    batches: list[torch.Tensor]) -> tuple[dict[str, dict[str, Any]], dict]:
    """Smooth the token-sequence groups where it pays; return per-layer notes and a summary."""
    groups = linear_groups(gm, names)
    stats = input_stats(gm, [str(nodes[0].target) for nodes in groups.values()], batches)

    def choose(name: str, layers: list[nn.Linear]) -> tuple[torch.Tensor, dict] | None:
        found = stats.get(name)
        return best_factors(found, layers, config) if found and found.tokens else None

    notes = rescale_groups(gm, names, choose, "smoothquant")
    summary = {"alpha": "auto", "groups": len(groups), "layers": len(notes),
               "folded": sum(v["smoothquant_folded"] for v in notes.values()),
               "alphas": sorted({v["smoothquant_alpha"] for v in notes.values()})}
    return notes, summary
