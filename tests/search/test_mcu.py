"""The MCU instruction predictor: layers from shapes match the lowered graph's, the packaged table
predicts a held-out model measured in qemu, and --latency-ms works on cortex-m4."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import edgeopt as eo
from edgeopt.deploy.targets import get_target
from edgeopt.errors import EdgeoptError
from edgeopt.search import Policy, SearchSettings, make_budget, mcu, search

RECIPE = {"model": "lenet300", "data": "digits", "epochs": 1, "measure": {"runs": 3, "warmup": 1}}
SEARCH_VARIANTS = {"conv2d/int8", "conv2d/int4", "pointwise/int8", "pointwise/int4",
                   "depthwise/int8", "depthwise/int4", "fully_connected/int8",
                   "fully_connected/int4", "add", "mean", "max_pool2d", "reshape"}


def _lowered(model, example, bits):
    from edgeopt.deploy.c.compress import choose
    from edgeopt.deploy.lower import lower_model

    overrides = {k: eo.QuantSpec(bits=v) for k, v in bits.items() if v != 8}
    calib = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    quantized = eo.apply(model, eo.QuantConfig(weight_overrides=overrides, calibration_samples=8),
                         data=[(calib, None)])
    graph = lower_model(quantized, example, calib)
    return graph, choose(graph)


@pytest.mark.parametrize("name, shape", [("resnet8", (1, 8, 8)), ("tcn1d", (2, 16))])
def test_layers_from_shapes_are_the_lowered_graphs(name, shape):
    torch.manual_seed(0)
    model = eo.zoo.create(name, shape, 4).eval()
    example = torch.randn(1, *shape)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)]
    bits = {n: 4 for n in convs[::2]}  # every other conv 4-bit
    graph, forms = _lowered(model, example, bits)
    from_ir = [layer for layer in mcu.ir_layers(graph, forms) if layer.variant != "reshape"]
    from_shapes = [layer for layer in mcu.torch_layers(model, example, bits)
                   if layer.variant != "reshape"]
    assert from_shapes == from_ir
    assert {"conv2d/int4", "conv2d/int8", "fully_connected/int8"} <= {x.variant for x in from_ir}


def test_low_rank_factors_are_costed_at_the_width_of_the_layer_they_replace():
    from edgeopt.lowrank.layers import Factorized
    from edgeopt.search.cost import shaped_copy
    from edgeopt.search.space import quant_layers

    torch.manual_seed(0)
    base = eo.zoo.create("resnet8", (1, 8, 8), 4).eval()
    example = torch.randn(1, 1, 8, 8)
    convs = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d)]
    policy = Policy(bits={n: 4 if i % 2 else 8 for i, n in enumerate(convs)}, keep={}, energy=0.7)
    model = shaped_copy(base, example, policy)
    assert sum(isinstance(m, Factorized) for m in model.modules()) >= 4
    # the lowering quantizes by the recipe's patterns (`conv` and `conv.*`); the predictor
    # reads the policy's widths, keyed by the names before factorization
    patterns = {p: v["bits"] for p, v in quant_layers(policy)["weight_overrides"].items()}
    graph, forms = _lowered(model, example, patterns)
    from_ir = [layer for layer in mcu.ir_layers(graph, forms) if layer.variant != "reshape"]
    from_shapes = [layer for layer in mcu.torch_layers(model, example, policy.bits)
                   if layer.variant != "reshape"]
    assert from_shapes == from_ir and "conv2d/int4" in {x.variant for x in from_ir}


def test_predict_is_the_variants_row_times_the_features():
    layer = mcu.Layer("conv2d/int8", macs=100, patch=10, taps=20, outputs=30, inputs=40, pixels=5,
                      weights=50)
    row = [2.0, 0.5, 0.0, 30.0, 0.0, 1.0, 0.0, 100.0]
    table = {"call": 7.0, "coefficients": {"conv2d/int8": row}}
    assert mcu.predict(table, [layer]) == 7 + 200 + 5 + 900 + 5 + 100
    compressed = dataclasses.replace(layer, variant="conv2d/sparse")  # borrows the 8-bit row
    assert mcu.predict(table, [compressed]) == mcu.predict(table, [layer])


def test_latency_is_instructions_at_the_targets_clock():
    m4 = get_target("cortex-m4")
    assert m4.clock_hz == 168e6 and m4.cycles_per_instruction == 1.0
    assert m4.latency_ms(168_000) == pytest.approx(1.0)
    assert get_target("x86-ort").latency_ms(1000) is None
    budget = make_budget("cortex-m4", latency_ms=2, clock_mhz=84, cpi=1.5)
    assert (budget.clock_hz, budget.cycles_per_instruction) == (84e6, 1.5)
    assert make_budget("cortex-m7").clock_hz == 216e6


@pytest.mark.parametrize("kwargs, option", [
    ({"latency_ms": 0}, "--latency-ms"), ({"latency_ms": -1.0}, "--latency-ms"),
    ({"latency_ms": math.nan}, "--latency-ms"), ({"latency_ms": math.inf}, "--latency-ms"),
    ({"clock_mhz": 0}, "--clock-mhz"), ({"cpi": -2}, "--cpi"),
])
def test_bad_latency_options_name_the_option(kwargs, option):
    with pytest.raises(EdgeoptError, match=option):
        make_budget("cortex-m4", **kwargs)


def test_clock_options_are_refused_on_the_host_target():
    with pytest.raises(EdgeoptError, match="--clock-mhz .*MCU target"):
        make_budget("x86-ort", clock_mhz=100)


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_the_packaged_table_covers_every_kernel_a_search_policy_produces(target):
    table = json.loads(mcu.DEFAULT_TABLE.read_text())[target]
    assert SEARCH_VARIANTS <= set(table["coefficients"])
    assert all(v >= 0 for row in table["coefficients"].values() for v in row)


def test_the_user_cache_is_keyed_by_target_and_c_sources(tmp_path, monkeypatch):
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda name: str(tmp_path))
    path = mcu.cache_file("cortex-m4")
    assert path.name == f"fit-cortex-m4-{mcu.sources_hash()}.json"
    packaged = mcu.load_table("cortex-m4")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"call": 1.0, "coefficients": {}}))
    assert mcu.load_table("cortex-m4") == {"call": 1.0, "coefficients": {}} != packaged


def _toolchain():
    from edgeopt.deploy.mcu import toolchain_missing

    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)


def test_the_packaged_table_predicts_a_held_out_model_measured_in_qemu():
    """One board run: a model of no training family (LeNet-5 at 16×16, mixed 4 / 8-bit)."""
    _toolchain()
    from edgeopt.search import mcufit

    torch.manual_seed(0)
    model = eo.zoo.create("lenet5", (1, 16, 16), 10).eval()
    example = torch.randn(1, 1, 16, 16)
    bits = {"conv1": 8, "conv2": 4, "fc1": 8, "fc2": 4, "fc3": 8}
    measured = mcufit.measure(model, example, bits, "cortex-m4")
    table = mcu.load_table("cortex-m4")
    predicted = mcu.predict(table, mcu.torch_layers(model, example, bits))
    assert abs(predicted - measured["total"]) / measured["total"] < 0.15
    big = [(layer, count) for layer, count in zip(measured["layers"], measured["counts"])
           if count > 0.1 * measured["total"]]
    assert big  # the layers that matter, each within 25 %
    for layer, count in big:
        assert abs(mcu.predict({**table, "call": 0}, [layer]) - count) / count < 0.25, layer


def test_latency_budget_on_cortex_m4_filters_policies(tmp_path):
    """int8 fully connected layers run several times faster than 4-bit ones (unpacked per row):
    a budget between the two uniform policies' predicted latencies keeps only int8."""
    predictor = mcu.latency_model(get_target("cortex-m4"), torch.zeros(1, 1, 8, 8))
    model = eo.zoo.create("lenet300", (1, 8, 8), 10).eval()
    layers = ["fc1", "fc2", "fc3"]
    int8, int4 = (predictor(model, Policy(bits=dict.fromkeys(layers, b), keep={}))
                  for b in (8, 4))
    assert int8 < int4
    budget = (int8 + int4) / 2
    result = search(RECIPE, target="cortex-m4", latency_ms=budget, out_dir=tmp_path / "s",
                    trials=2, progress=False,
                    settings=SearchSettings(finetune_samples=96, run_best=False))
    first, second = result["trials"]
    assert first["latency_ms"] == pytest.approx(int8) and first["fits"] and first["accuracy"]
    assert second["latency_ms"] == pytest.approx(int4) and not second["fits"]
    assert second["accuracy"] is None  # over the latency budget: not trained
    assert result["budget"]["latency_ms"] == budget and result["budget"]["clock_hz"] == 168e6
    assert all(p["latency_ms"] <= budget for p in result["pareto"] if p["fits"])


@pytest.mark.parametrize("args, option", [
    (["--target", "cortex-m4", "--latency-ms", "-1"], "--latency-ms"),
    (["--target", "cortex-m4", "--latency-ms", "1", "--clock-mhz", "0"], "--clock-mhz"),
    (["--target", "x86-ort", "--cpi", "1.2"], "--cpi"),
])
def test_bad_latency_options_are_one_error_line_and_nothing_written(tmp_path, args, option):
    from click.testing import CliRunner

    from edgeopt.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["search", "--out", str(out), "--trials", "1", *args])
    lines = [line for line in result.stderr.splitlines() if line]
    assert result.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith("error:") and option in lines[0]
    assert not out.exists() and list(Path(tmp_path).iterdir()) == []


def test_budget_guided_seeds_start_from_8_bit_when_4_bit_misses_the_latency_budget():
    from types import SimpleNamespace

    from edgeopt.search.budget import Budget
    from edgeopt.search.cost import FormulaCost
    from edgeopt.search.seeds import budget_guided
    from edgeopt.search.space import build_space

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 4)).eval()
    example = torch.randn(1, 1, 6, 6)
    space = build_space(model, example, "mcu")
    cost = FormulaCost(example, mcu.latency_model(get_target("cortex-m4"), example))
    ms = {(b, k): cost.latency_ms(model, space.uniform(b, k)) for b in (4, 8) for k in (0.5, 1.0)}
    assert ms[8, 0.5] < ms[8, 1.0] < ms[4, 0.5]  # 4-bit: slower even at half width
    limit = (ms[8, 0.5] + ms[8, 1.0]) / 2
    budget = Budget(target="cortex-m4", kind="mcu", flash_bytes=None, ram_bytes=None,
                    latency_ms=limit)
    seeds = budget_guided(SimpleNamespace(base=model, space=space, budget=budget, cost=cost))
    assert seeds and all(set(p.bits.values()) == {8} for p in seeds)
    assert all(cost.latency_ms(model, p) <= limit for p in seeds)
    assert any(k < 1.0 for k in seeds[0].keep.values())


def test_space_selection_counts_an_mcu_latency_budget():
    import functools

    from edgeopt.search.architecture import candidate_spaces, select_space
    from edgeopt.search.cost import latency_for

    native = (1, 8, 8)
    spaces = candidate_spaces("dscnn", native, widths=(0.25, 1.0), scales=(0.5, 1.0))
    free = make_budget("cortex-m4")
    _, loose = select_space(spaces, free, native, 10, samples=2, bits=8, seed=0)
    assert all(r["fitting"] == 2 for r in loose)
    budget = make_budget("cortex-m4", latency_ms=4.0)  # 672,000 instructions at 168 MHz
    chosen, rows = select_space(spaces, budget, native, 10, samples=2, bits=8, seed=0,
                                latency=functools.partial(latency_for, budget))
    assert any(r["fitting"] < 2 for r in rows) and any(r["fitting"] for r in rows)  # it decides
    assert rows[[(s.width_mult, s.resolution) for s in spaces].index(
        (chosen.width_mult, chosen.resolution))]["chosen"]
