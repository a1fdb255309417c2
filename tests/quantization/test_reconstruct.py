"""Layer-by-layer refinement: rows of calibration data, and the time budget end to end."""

import time

import pytest
import torch
import torch.nn as nn
from qhelpers import ds_cnn, images

import edgeopt as eo
from edgeopt.quantization import AdvancedQuantConfig
from edgeopt.quantization.modules import GroupedLinear, QuantizedWeightLayer
from edgeopt.quantization.rows import channel_dim, input_rows, probe, rows_forward, visit_layers

W4 = eo.QuantSpec(bits=4)
LAYERS = ["0", "3", "6", "11"]  # ds_cnn's conv, depthwise, pointwise and Linear


def _cases():
    torch.manual_seed(0)
    return [
        (QuantizedWeightLayer(nn.Linear(12, 5), W4), torch.randn(4, 3, 12)),
        (QuantizedWeightLayer(nn.Conv2d(3, 6, 3, stride=2, padding=1), W4),
         torch.randn(2, 3, 9, 8)),
        (QuantizedWeightLayer(nn.Conv2d(6, 6, 3, padding=1, groups=6), W4),
         torch.randn(2, 6, 7, 7)),
        (QuantizedWeightLayer(nn.Conv2d(4, 6, 1, groups=2), W4), torch.randn(2, 4, 5, 5)),
        (QuantizedWeightLayer(nn.Conv1d(3, 4, 3, dilation=2), W4), torch.randn(2, 3, 11)),
        (GroupedLinear(nn.Linear(16, 5), eo.QuantSpec(bits=4, granularity="per_group",
                                                      group_size=8)), torch.randn(6, 16)),
    ]


@pytest.mark.parametrize("layer,x", _cases())
def test_rows_forward_is_the_layers_output_at_the_picked_rows(layer, x):
    with torch.no_grad():
        y = layer(x)
    y = y.movedim(1, -1) if channel_dim(layer) == 1 else y
    y = y.reshape(-1, y.shape[-1])
    index = torch.arange(1, y.shape[0], 3)
    rows = input_rows(layer, x, index)
    assert torch.allclose(rows_forward(layer, layer.weight(), rows), y[index], atol=1e-5)


def _adaround(budget, iterations, **kwargs):
    return eo.QuantConfig(weights=W4, rounding="adaround", advanced=AdvancedQuantConfig(
        time_budget_s=budget, adaround_iterations=iterations, **kwargs))


def test_a_spent_budget_keeps_nearest_rounding_and_says_so():
    model, calib = ds_cnn(), images(128, seed=1)
    plain = eo.apply(model, eo.QuantConfig(weights=W4), data=[calib])
    start = time.monotonic()
    q, q_stats = eo.apply_with_stats(model, _adaround(1e-3, 100_000), data=[calib])
    assert time.monotonic() - start < 30
    refinement = q_stats["quant"].methods["refinement"]
    assert refinement["fell_back"] == LAYERS and refinement["rounding_refined"] == 0
    assert refinement["iterations"] == {}
    for name in LAYERS:
        assert torch.equal(q.get_submodule(name).weight_q, plain.get_submodule(name).weight_q)
    rows = {r["name"]: r for r in q_stats["quant"].layers}
    assert rows["3"]["rounding_fallback"] == "nearest: time budget spent"
    x = images(64, seed=2)
    with torch.no_grad():
        assert torch.equal(q(x), plain(x))


def test_a_small_budget_sets_iterations_per_layer_and_is_kept():
    model, calib = ds_cnn(), images(128, seed=1)
    q, q_stats = eo.apply_with_stats(model, _adaround(3.0, 100_000), data=[calib])
    refinement = q_stats["quant"].methods["refinement"]
    assert refinement["elapsed_s"] < 3.0 + 2.0  # the last layer's final evaluation may overrun
    done = refinement["iterations"]
    assert set(done) | set(refinement["fell_back"]) == set(LAYERS) and done
    assert all(10 <= n < 100_000 for n in done.values())
    for row in q_stats["quant"].layers:
        if row["name"] in done:
            assert row["adaround_loss"] <= row["adaround_loss_nearest"]
            assert row["adaround_iterations"] == done[row["name"]]


def test_no_budget_runs_every_iteration_on_every_row():
    model, calib = ds_cnn(), images(96, seed=1)
    q, q_stats = eo.apply_with_stats(model, _adaround(None, 25, reconstruction_rows=None), data=[calib])
    refinement = q_stats["quant"].methods["refinement"]
    assert refinement["iterations"] == dict.fromkeys(LAYERS, 25)
    assert refinement["fell_back"] == [] and refinement["samples"] == 96
    rows = {r["name"]: r["reconstruction_rows"] for r in q_stats["quant"].layers}
    assert rows == {"0": 96 * 64, "3": 96 * 64, "6": 96 * 64, "11": 96}  # 8x8 positions


def test_reconstruction_rows_cap_the_positions_kept_per_sample():
    model, calib = ds_cnn(), images(64, seed=1)
    q, q_stats = eo.apply_with_stats(model, _adaround(None, 12, reconstruction_rows=256), data=[calib])
    rows = {r["name"]: r["reconstruction_rows"] for r in q_stats["quant"].layers}
    assert rows == {"0": 256, "3": 256, "6": 256, "11": 64}  # 4 of 64 positions per sample


def test_gptq_out_of_budget_falls_back_to_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10)).eval()
    calib = torch.randn(256, 64)
    config = eo.QuantConfig(method="weight_only", activations=None, weights=W4)
    plain = eo.apply(model, config, data=[calib])
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(
        method="weight_only", activations=None, weights=W4, rounding="gptq",
        advanced=AdvancedQuantConfig(time_budget_s=1e-3)), data=[calib])
    assert q_stats["quant"].methods["refinement"]["fell_back"] == ["0", "2"]
    assert torch.equal(q.get_submodule("0").weight_q, plain.get_submodule("0").weight_q)
    full, full_stats = eo.apply_with_stats(model, eo.QuantConfig(
        method="weight_only", activations=None, weights=W4, rounding="gptq"), data=[calib])
    refinement = full_stats["quant"].methods["refinement"]
    assert refinement["fell_back"] == [] and refinement["iterations"] == {"0": 1, "2": 1}


def test_visit_layers_lets_later_layers_see_what_a_visit_changed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    seen = {}

    def visit(index, name, x):
        seen[name] = (index, x.clone())
        if name == "0":  # "refine" the first layer before it runs
            model[0].weight.zero_()
            model[0].bias.fill_(1.0)

    visit_layers(model, ["0", "2"], torch.randn(3, 4), visit)
    assert seen["2"][0] == 1 and torch.equal(seen["2"][1], torch.ones(3, 4))
    assert set(seen) == {"0", "2"}


def test_probe_finds_positions_and_capture_costs_that_grow_with_depth():
    model = ds_cnn()
    found = probe(model, model, ["0", "3", "11"], images(8, seed=3))
    assert found.positions == {"0": 64, "3": 64, "11": 1}
    # the float pass up to a layer grows with depth; the quantized step between neighbours is
    # timing noise on a loaded machine, so only first vs last is compared
    assert all(t > 0 for t in found.capture_seconds)
    assert found.capture_seconds[-1] >= found.capture_seconds[0]
    assert found.pass_bytes >= 4 * 16 * 64  # at least the largest activation, 16 x 8 x 8
