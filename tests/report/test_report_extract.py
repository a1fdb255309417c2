"""Figure specs from statistics: each plot's data, read defensively from whatever is recorded."""

import copy

import pytest
from report_samples import LAYERS, default_metrics, full_metrics, quant_stats

from edgeopt.report import extract
from edgeopt.report.load import normalize

CTX = {"section": "stage-s", "stage": "s", "technique": "quant"}


def figures_of(metrics):
    return extract.build_figures(normalize(metrics).metrics)


def test_pareto_front_minimizes_x_and_maximizes_y():
    xs = [10.0, 5.0, 5.0, 8.0, 2.0]
    ys = [99.0, 98.0, 97.0, 99.0, 90.0]
    # (10,99) is dominated by (8,99); (5,97) by (5,98)
    assert extract.pareto(xs, ys) == [False, True, False, True, True]


def test_tradeoff_plots_size_and_latency_with_front():
    figs = [f for f in figures_of(full_metrics()) if f["kind"] == "tradeoff"]
    assert [f["title"] for f in figs] == ["Accuracy vs size", "Accuracy vs latency"]
    size = figs[0]["data"]
    assert size["stages"][0] == "baseline" and len(size["x"]) == 6
    front = {n for n, p in zip(size["stages"], size["pareto"]) if p}
    assert front == {"baseline", "int8_qat", "clustered"}  # distilled: clustered is both
    assert size["y"][0] == pytest.approx(98.52)  # fractions become percent


def test_tradeoff_needs_two_measured_stages():
    metrics = default_metrics()
    metrics["stages"][1]["accuracy"] = None
    assert not [f for f in figures_of(metrics) if f["kind"] == "tradeoff"]


def test_sparsity_map_is_layers_by_stage():
    metrics = full_metrics()
    second = copy.deepcopy(metrics["stages"][1])
    second["name"] = "pruned2"
    second["technique_stats"]["prune"]["layers"] = [{"name": "fc", "sparsity": 0.9},
                                                    {"name": "extra", "sparsity": 0.1}]
    metrics["stages"].append(second)
    (fig,) = [f for f in figures_of(metrics) if f["section"] == "sparsity"]
    data = fig["data"]
    assert data["columns"] == ["pruned", "pruned2"]
    assert data["rows"] == LAYERS + ["extra"]
    assert data["values"][LAYERS.index("fc")] == [0.4, 0.9]
    assert data["values"][-1] == [None, 0.1]


def test_error_histograms_call_out_the_outlier_layer():
    figs = extract.technique_figures("s", "quant", quant_stats())
    weight = next(f for f in figs if f["title"].startswith("Weight quantization error"))
    outliers = [la["name"] for la in weight["data"]["layers"] if la["outlier"]]
    assert outliers == ["layer2.0.downsample"]
    assert len(weight["callouts"]) == 1 and "layer2.0.downsample" in weight["callouts"][0]
    act = next(f for f in figs if f["title"].startswith("Activation quantization error"))
    assert not act["callouts"]


def test_malformed_histograms_are_skipped():
    good = {"edges": [-1, 0, 1], "counts": [3, 5]}
    bad = [{"edges": [0, 1], "counts": [1, 2]}, {"edges": [1, 0, 2], "counts": [1, 1]},
           {"edges": [0, 1, 2], "counts": [0, 0]}, {"edges": "x", "counts": [1]}, None,
           {"edges": [0, 1, 2], "counts": [1, float("nan")]}]
    assert extract.histogram(good) == good
    assert all(extract.histogram(b) is None for b in bad)
    layers = [{"name": f"l{i}", "weight_error_hist": b} for i, b in enumerate(bad)]
    assert extract.error_hists(CTX, layers, "weight_error_hist", "weight") is None


def test_histogram_rms_and_forced_outlier():
    hist = {"edges": [-2.0, 0.0, 2.0], "counts": [1, 1]}
    assert extract.hist_rms(hist) == pytest.approx(1.0)
    layers = [{"name": "a", "weight_error_hist": hist, "outlier": True}]
    fig = extract.error_hists(CTX, layers, "weight_error_hist", "weight")
    assert fig["data"]["layers"][0]["outlier"] and fig["callouts"]


def test_many_layers_show_outliers_first_within_the_panel_limit():
    layers = [{"name": f"l{i}", "weight_error_hist": {"edges": [-1, 0, 1], "counts": [1, 1]}}
              for i in range(20)]
    layers[17]["weight_error_hist"] = {"edges": [-9, 0, 9], "counts": [1, 1]}
    fig = extract.error_hists(CTX, layers, "weight_error_hist", "weight")
    assert len(fig["data"]["shown"]) == extract.MAX_PANELS
    assert "l17" in fig["data"]["shown"] and len(fig["data"]["layers"]) == 20
    assert "12 shown" in fig["caption"]


def test_saturation_bars_and_map():
    figs = {f["title"]: f for f in extract.technique_figures("s", "quant", quant_stats())}
    bars = figs["Activation clipping and saturation per layer"]["data"]
    assert bars["series"]["clipped"][3] == pytest.approx(3.0)  # fraction -> percent
    assert bars["highlight"] == ["layer2.0.conv1", "layer3.0.conv2"]
    heat = figs["Activation saturation map"]["data"]
    assert len(heat["rows"]) == len(LAYERS)
    assert len({len(r) for r in heat["values"]}) == 1  # ragged rows padded
    assert heat["values"][0][-1] is None


def test_curves_from_dict_or_history_records():
    fig = extract.curves(CTX, {"curves": {"loss": [1.0, 0.5], "bad": "x", "empty": [None]}})
    assert fig["data"]["series"] == {"loss": [1.0, 0.5]} and fig["data"]["x"] == [1, 2]
    hist = extract.curves(CTX, {"history": [{"epoch": 3, "loss": 0.4, "val_accuracy": 0.9},
                                            {"epoch": 4, "loss": 0.3}]})
    assert hist["data"]["x"] == [3, 4]
    assert hist["data"]["series"]["val_accuracy"] == [0.9, None]
    assert extract.curves(CTX, {"curves": {}}) is None


def test_pruning_rounds_params_and_masks():
    figs = {f["title"]: f for f in figures_of(full_metrics()) if f["stage"] == "pruned"}
    trend = figs["Sparsity and accuracy over pruning rounds"]["data"]
    assert trend["x"] == [0, 1, 2, 3, 4] and set(trend["series"]) == {"sparsity", "accuracy"}
    params = figs["Parameters per layer, before and after"]
    assert params["data"]["series"]["before"][0] == 432
    assert "fewer" in params["caption"]
    assert len(figs["Weight masks"]["data"]["masks"]) == 4


def test_ragged_or_non_numeric_masks_are_skipped():
    assert extract.masks(CTX, {"masks": {"a": [[1, 0], [1]], "b": [["x"]], "c": []}}) is None


def test_sensitivity_is_sorted_and_tops_highlighted():
    fig = extract.sensitivity(CTX, {"sensitivity": [
        {"name": "a", "metric_drop": 0.1, "sqnr_db": 30}, {"name": "b", "metric_drop": 2.0},
        {"name": "c"}, {"metric_drop": 5}, {"name": "d", "metric_drop": 0.5}]})
    assert fig["data"]["layers"] == ["b", "d", "a"]
    assert fig["data"]["series"]["SQNR (dB)"] == [None, None, 30]
    assert fig["data"]["highlight"] == ["b", "d", "a"]
    mapping = extract.sensitivity(CTX, {"sensitivity": {"x": 1.0, "y": 3.0}})
    assert mapping["data"]["layers"] == ["y", "x"]


def test_sensitivity_as_quantization_records_it():
    rows = [{"name": "a", "type": "Conv2d", "sqnr_db": 35.0, "agreement": 0.99,
             "accuracy_drop": None},
            {"name": "b", "type": "Conv2d", "sqnr_db": 18.0, "agreement": 0.9,
             "accuracy_drop": None}]
    fig = extract.sensitivity(CTX, {"sensitivity": rows})
    assert fig["data"]["layers"] == ["b", "a"]  # lowest SQNR first
    assert set(fig["data"]["series"]) == {"SQNR (dB)", "disagreement (%)"}
    assert fig["data"]["series"]["disagreement (%)"] == pytest.approx([10.0, 1.0])
    assert fig["callouts"] == ["most sensitive (SQNR (dB)): b, a"]
    rows[0]["accuracy_drop"] = 0.4
    assert extract.sensitivity(CTX, {"sensitivity": rows})["data"]["layers"] == ["a", "b"]
    assert extract.sensitivity(CTX, {"sensitivity": [{"name": "a"}]}) is None


def test_lowrank_and_cluster_bars():
    figs = {(f["stage"], f["title"]): f for f in figures_of(full_metrics())}
    rank = figs[("lowrank", "Rank per layer")]
    assert set(rank["data"]["series"]) == {"kept rank", "full rank"}
    assert "Energy kept" in rank["caption"]
    assert figs[("clustered", "Clusters per layer")]["data"]["series"]["clusters"][0] == 16


def test_default_run_and_unknown_fields_make_no_technique_plots():
    figs = figures_of(default_metrics())
    assert [f["kind"] for f in figs] == ["tradeoff", "tradeoff"]
    assert extract.technique_figures("s", "new", {"layers": "nope", "curves": 3}) == []


def test_ids_are_unique_and_facts_list_scalars():
    metrics = full_metrics()
    metrics["stages"].append(copy.deepcopy(metrics["stages"][-1]))  # same name twice
    ids = [f["id"] for f in figures_of(metrics)]
    assert len(ids) == len(set(ids))
    facts = dict(extract.facts(quant_stats()))
    assert facts["method"] == "qat" and facts["float layers"] == "none"
    assert facts["quantized layers"].startswith("9: conv1, ")
    assert "layers" not in facts and "curves" not in facts


def test_layer_table_has_scalar_columns_only():
    table = extract.layer_table(quant_stats()["layers"])
    assert table["columns"][:3] == ["layer", "type", "weight_bits"]
    assert "weight_error_hist" not in table["columns"]
    assert table["rows"][0][:3] == ["conv1", "Conv2d", "8"]
    assert extract.layer_table([{"name": "x"}]) == {}
    ragged = extract.layer_table([{"name": "a", "rank": [2, 3]}, {"name": "b", "rank": {}}])
    assert ragged["rows"] == [["a", "2x3"], ["b", ""]]


def test_low_sqnr_layers_are_called_out():
    figs = {f["title"]: f for f in extract.technique_figures("s", "quant", quant_stats())}
    fig = figs["Quantization SQNR per layer"]
    assert fig["data"]["highlight"] == ["layer2.0.downsample"]
    assert fig["callouts"] == ["low SQNR layer2.0.downsample: 24.0 dB (median 43.0 dB)"]
    assert extract.sqnr(CTX, [{"name": "a"}]) is None


def test_saturation_all_zero_says_so():
    fig = extract.saturation_bars(CTX, [{"name": "a", "clip_ratio": 0.0}, {"name": "b"}])
    assert fig["data"]["layers"] == ["a"] and fig["data"]["highlight"] == []
    assert fig["caption"].startswith("No layer clipped or saturated any activation.")


def test_field_aliases_and_top_level_curves():
    stats = {"method": "svd", "finetune_loss": [0.5, 0.3, 0.2], "seconds": 1.5,
             "curves": {"val_accuracy": [0.9, 0.95, 0.97], "best_epoch": 2, "seconds": 3.0},
             "layers": [{"name": "fc", "rank": 4, "max_rank": 10, "energy_kept": 0.93},
                        {"name": "conv", "rank": [2, 3], "max_rank": 8}]}
    figs = {f["title"]: f for f in extract.technique_figures("s", "lowrank", stats)}
    rank = figs["Rank per layer"]
    assert rank["data"]["series"] == {"kept rank": [4, None], "full rank": [10, 8]}
    assert rank["caption"] == "Energy kept: 93.0 % (lowest layer) to 93.0 %."
    curves = figs["Training curves"]["data"]
    assert set(curves["series"]) == {"val_accuracy", "finetune_loss"}
    assert curves["marker"] == 3  # best_epoch is 0-based: the third epoch
    facts = dict(extract.facts(stats))
    assert "finetune loss" not in facts and facts["seconds"] == "1.5"
