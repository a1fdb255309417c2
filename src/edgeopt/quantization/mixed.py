"""Mixed precision: a weight bit width per layer, from per-layer sensitivity, under a budget.

1. Sensitivity: for every layer and candidate width, the model's output noise (MSE relative to
   the output power) with only that layer's weights quantized to that width.
2. A size budget takes the assignment with the least total noise that fits (an exact dynamic
   program over the multiple-choice knapsack).
3. An accuracy budget searches the least-noise assignments for budgets falling from all-widest
   to all-narrowest for the smallest whose measured drop (a full quantization, binary search)
   stays within it.
The choice becomes per-layer `weight_overrides` (and `exclude` for 32-bit layers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgeopt.errors import ConfigError
from edgeopt.quantization.config import (
    Granularity,
    MixedPrecision,
    NumberFormat,
    QuantConfig,
    QuantSpec,
)
from edgeopt.quantization.formats import cast_round_trip
from edgeopt.quantization.primitives import (
    choose_qparams,
    fake_quantize,
    group_minmax,
    spec_range,
    weight_minmax,
)

Assignment = dict[str, int]


def candidate_spec(base: QuantSpec, bits: int) -> QuantSpec:
    if bits == 16:
        return dataclasses.replace(base, dtype=NumberFormat.FP16, group_size=None,
                                   granularity="per_channel")
    return dataclasses.replace(base, bits=bits)


@torch.no_grad()
def simulate_weight(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The weight as a layer with `spec` would see it (per tensor, channel or group, or a
    float format)."""
    if spec.dtype.is_float:
        return cast_round_trip(weight, spec.dtype)
    qmin, qmax = spec_range(spec, is_weight=True)
    if spec.granularity is Granularity.PER_GROUP and spec.group_size is not None \
            and weight.dim() == 2 and weight.shape[1] % spec.group_size == 0:
        transposed = weight.t()  # groups run along the input dimension, as GroupedLinear's
        low, high = group_minmax(transposed, spec.group_size)
        scale, zero = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric)
        full_scale = scale.repeat_interleave(spec.group_size, 0)
        full_zero = zero.repeat_interleave(spec.group_size, 0)
        return fake_quantize(transposed, full_scale, full_zero, qmin, qmax).t()
    low, high = weight_minmax(weight, spec.granularity)
    scale, zero = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric)
    return fake_quantize(weight, scale, zero, qmin, qmax)


@torch.no_grad()
def weight_sensitivity(model: nn.Module, names: list[str], base: QuantSpec,
                       candidates: tuple[int, ...], inputs: torch.Tensor
                       ) -> dict[str, dict[int, float]]:
    """Relative output noise with one layer's weights at one width (others float)."""
    reference = model(inputs)
    power = float(reference.float().pow(2).mean()) or 1.0
    result: dict[str, dict[int, float]] = {}
    for name in names:
        layer = model.get_submodule(name)
        original = layer.weight.data.clone()
        result[name] = {}
        for bits in candidates:
            if bits == 32:
                result[name][bits] = 0.0
                continue
            spec = candidate_spec(base, bits)
            layer.weight.data = simulate_weight(original, spec)
            noise = float((model(inputs) - reference).float().pow(2).mean())
            result[name][bits] = noise / power
        layer.weight.data = original
    return result


def layer_bytes(weight: torch.Tensor, bits: int) -> int:
    """Packed weight bytes at `bits` (integer widths add a float32 scale per output channel)."""
    if bits in (16, 32):
        return weight.numel() * bits // 8
    return math.ceil(weight.numel() * bits / 8) + 4 * weight.shape[0]


def model_bytes(model: nn.Module, names: list[str], assignment: Assignment) -> int:
    """Quantized layers' weights at their widths, every other parameter at 4 bytes."""
    weights = {id(model.get_submodule(n).weight): n for n in names}
    total = 0
    for param in list(model.parameters()) + list(model.buffers()):
        name = weights.get(id(param))
        if name is None:
            total += 4 * param.numel() if param.is_floating_point() else 0
        else:
            total += layer_bytes(param, assignment[name])
    return total


def best_under_budget(sensitivity: dict[str, dict[int, float]],
                      sizes: dict[str, dict[int, int]], budget: int, buckets: int = 4000
                      ) -> Assignment | None:
    """The assignment with the least total noise whose layer bytes fit `budget`: an exact
    dynamic program over the multiple-choice knapsack, sizes rounded up to budget / buckets
    (so it never exceeds the budget). None if even the narrowest choice does not fit."""
    names = list(sensitivity)
    unit = max(1, math.ceil(budget / buckets))
    cap = budget // unit
    cost = np.full(cap + 1, np.inf)
    cost[0] = 0.0
    choices = []
    for name in names:
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, dtype=np.int64)
        for bits, noise in sensitivity[name].items():
            units = math.ceil(sizes[name][bits] / unit)
            if units > cap:
                continue
            shifted = np.full(cap + 1, np.inf)
            shifted[units:] = cost[:cap + 1 - units] + noise
            better = shifted < new
            new[better], pick[better] = shifted[better], bits
        cost = new
        choices.append(pick)
    if not np.isfinite(cost).any():
        return None
    used = int(np.argmin(cost))
    assignment: Assignment = {}
    for name, pick in zip(reversed(names), reversed(choices)):
        bits = int(pick[used])
        assignment[name] = bits
        used -= math.ceil(sizes[name][bits] / unit)
    return {name: assignment[name] for name in names}


def downgrade_path(sensitivity: dict[str, dict[int, float]], sizes: dict[str, dict[int, int]],
                   candidates: tuple[int, ...], steps: int = 16) -> list[Assignment]:
    """Least-noise assignments for layer budgets falling evenly from all-widest to
    all-narrowest (duplicates dropped): the candidates an accuracy budget is searched along."""
    widest = sum(sizes[n][max(candidates)] for n in sizes)
    narrowest = sum(sizes[n][min(candidates)] for n in sizes)
    path: list[Assignment] = []
    for i in range(steps + 1):
        budget = round(widest - (widest - narrowest) * i / steps)
        choice = best_under_budget(sensitivity, sizes, budget)
        if choice is not None and (not path or choice != path[-1]):
            path.append(choice)
    return path


def choose_by_size(path: list[Assignment], size_of: Callable[[Assignment], int],
                   budget: int) -> int:
    """Index of the first (most precise) assignment on the path that fits the budget."""
    smallest = size_of(path[-1])
    if smallest > budget:
        raise ConfigError(
            f"MixedPrecision.size_budget_bytes={budget} is below the smallest reachable size, "
            f"{smallest} bytes (every layer at the narrowest candidate); use at least {smallest} "
            "or add a narrower candidate."
        )
    return next(i for i, a in enumerate(path) if size_of(a) <= budget)


def fill_budget(assignment: Assignment, sensitivity: dict[str, dict[int, float]],
                sizes: dict[str, dict[int, int]], candidates: tuple[int, ...], spare: int
                ) -> Assignment:
    """Spend `spare` bytes on one-step upgrades, most noise removed per byte first: a path
    step can jump far below the budget when one large layer drops a width."""
    widths = sorted(candidates)
    current = dict(assignment)
    while True:
        best, best_gain = None, 0.0
        for name, bits in current.items():
            position = widths.index(bits)
            if position + 1 == len(widths):
                continue
            higher = widths[position + 1]
            cost = sizes[name][higher] - sizes[name][bits]
            gain = (sensitivity[name][bits] - sensitivity[name][higher]) / max(cost, 1)
            if cost <= spare and gain > best_gain:
                best, best_gain = (name, higher, cost), gain
        if best is None:
            return current
        current[best[0]] = best[1]
        spare -= best[2]


def choose_by_accuracy(path: list[Assignment], drop_of: Callable[[Assignment], float],
                       budget: float) -> tuple[int, list[dict[str, Any]]]:
    """The furthest point on the path whose measured drop is within the budget (binary search,
    assuming the drop grows along the path); index 0 if even that misses it."""
    evaluated: list[dict[str, Any]] = []

    def fits(i: int) -> bool:
        drop = drop_of(path[i])
        evaluated.append({"step": i, "drop": drop})
        return drop <= budget

    low, high = 0, len(path) - 1
    if fits(high):
        return high, evaluated
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, evaluated


def apply_assignment(config: QuantConfig, assignment: Assignment) -> QuantConfig:
    """The config with per-layer overrides for the chosen widths (32: left in float)."""
    overrides = {name: candidate_spec(config.weights, bits)
                 for name, bits in assignment.items() if bits != 32}
    excluded = tuple(name for name, bits in assignment.items() if bits == 32)
    return dataclasses.replace(config, weight_overrides={**overrides, **config.weight_overrides},
                               exclude=config.exclude + excluded, mixed_precision=None)


def summary(plan: MixedPrecision, assignment: Assignment, size: int,
            uniform: dict[int, int], sensitivity: dict[str, dict[int, float]]) -> dict[str, Any]:
    return {"assignment": assignment, "size_bytes": size,
            "size_budget_bytes": plan.size_budget_bytes, "accuracy_budget": plan.accuracy_budget,
            "uniform_size_bytes": {str(b): s for b, s in uniform.items()},
            "estimated_noise": sum(sensitivity[n][b] for n, b in assignment.items()),
            "note": "sizes count weights packed at their bit width; the QDQ artifact stores "
                    "weights of 2-8 bits in int8 containers"}
