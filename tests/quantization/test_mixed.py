import pytest
import torch
import torch.nn as nn
from qhelpers import images

import edgeopt as eo
from edgeopt.errors import ConfigError
from edgeopt.quantization import MixedPrecision
from edgeopt.quantization.mixed import downgrade_path


def sensitive_mlp() -> nn.Module:
    """Layer "1" is small but fragile (one huge weight ruins low-bit per-tensor scales)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 256),
                          nn.ReLU(), nn.Linear(256, 5)).eval()
    with torch.no_grad():
        model[1].weight[0, 0] = 6.0
    return model


W = eo.QuantSpec(granularity="per_tensor")


def test_downgrade_path_lowers_the_least_sensitive_bytes_first():
    sens = {"a": {4: 1.0, 8: 0.0}, "b": {4: 0.01, 8: 0.0}}
    sizes = {"a": {4: 50, 8: 100}, "b": {4: 50, 8: 100}}
    path = downgrade_path(sens, sizes, (4, 8))
    assert path == [{"a": 8, "b": 8}, {"a": 8, "b": 4}, {"a": 4, "b": 4}]


def test_size_budget_is_respected_and_protects_the_sensitive_layer():
    model, x = sensitive_mlp(), images(128)
    probe, probe_stats = eo.apply_with_stats(model, eo.QuantConfig(weights=W, mixed_precision=MixedPrecision(
        size_budget_bytes=10**9, candidates=(2, 8))), data=[x])
    sizes = probe_stats["quant"].methods["mixed_precision"][
        "uniform_size_bytes"]
    budget = (sizes["2"] + sizes["8"]) // 2
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(weights=W, mixed_precision=MixedPrecision(
        size_budget_bytes=budget, candidates=(2, 8))), data=[x])
    plan = q_stats["quant"].methods["mixed_precision"]
    assert plan["size_bytes"] <= budget
    assert plan["assignment"]["1"] == 8 and plan["assignment"]["3"] == 2
    rows = {r["name"]: r for r in q_stats["quant"].layers}
    assert rows["1"]["weight_bits"] == 8 and rows["3"]["mixed_precision_bits"] == 2


def test_size_budget_below_the_minimum_reports_the_minimum():
    with pytest.raises(ConfigError, match=r"below the smallest reachable size, \d+ bytes"):
        eo.apply(sensitive_mlp(), eo.QuantConfig(mixed_precision=MixedPrecision(
            size_budget_bytes=100, candidates=(4, 8))), data=[images(64)])


def test_accuracy_budget_keeps_the_measured_drop_within_it():
    model, x = sensitive_mlp(), images(128)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(weights=W, mixed_precision=MixedPrecision(
        accuracy_budget=1.0, candidates=(2, 8, 32))), data=[x])
    plan = q_stats["quant"].methods["mixed_precision"]
    chosen = [e for e in plan["evaluated"] if e["size_bytes"] == plan["size_bytes"]]
    assert plan["evaluated"] and (not chosen or chosen[0]["drop"] <= 1.0)
    assert plan["size_bytes"] < plan["uniform_size_bytes"]["32"]
    with torch.no_grad():
        drop = 100 * (1 - float((q(x).argmax(1) == model(x).argmax(1)).float().mean()))
    assert drop <= 1.0 + 1e-6


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of"),
    ({"size_budget_bytes": 10, "accuracy_budget": 1.0}, "exactly one of"),
    ({"size_budget_bytes": 10, "candidates": (4, 12)}, "MixedPrecision.candidates"),
    ({"accuracy_budget": -1.0}, "MixedPrecision.accuracy_budget"),
])
def test_bad_mixed_precision_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MixedPrecision(**kwargs)


def test_fill_budget_spends_spare_bytes_on_the_most_useful_upgrade():
    from edgeopt.quantization.mixed import fill_budget

    sens = {"big": {2: 1.0, 4: 0.5, 8: 0.0}, "small": {2: 0.9, 4: 0.1, 8: 0.0}}
    sizes = {"big": {2: 100, 4: 200, 8: 400}, "small": {2: 10, 4: 20, 8: 40}}
    chosen = fill_budget({"big": 2, "small": 2}, sens, sizes, (2, 4, 8), spare=35)
    assert chosen == {"big": 2, "small": 8}  # 10 + 20 bytes fit; the big layer's 100 do not


def test_knapsack_finds_the_brute_force_optimum():
    import itertools

    from edgeopt.quantization.mixed import best_under_budget

    g = torch.Generator().manual_seed(0)
    names = [f"l{i}" for i in range(5)]
    numel = {n: int(torch.randint(100, 2000, (1,), generator=g)) for n in names}
    sizes = {n: {b: numel[n] * b // 8 for b in (2, 4, 8)} for n in names}
    sens = {n: {b: float(torch.rand(1, generator=g)) * 4.0 ** -b for b in (2, 4, 8)}
            for n in names}
    budget = sum(sizes[n][4] for n in names)
    chosen = best_under_budget(sens, sizes, budget)
    best = min((c for c in itertools.product((2, 4, 8), repeat=5)
                if sum(sizes[n][b] for n, b in zip(names, c)) <= budget),
               key=lambda c: sum(sens[n][b] for n, b in zip(names, c)))
    assert sum(sizes[n][chosen[n]] for n in names) <= budget
    assert sum(sens[n][chosen[n]] for n in names) <= sum(
        sens[n][b] for n, b in zip(names, best)) * (1 + 1e-9)
