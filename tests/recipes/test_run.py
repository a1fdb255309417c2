"""A whole recipe run on a tiny model and data set: the run folder and its honesty."""

import json

import pytest

from edgeopt.errors import DataError, OutputError
from edgeopt.recipes import run_recipe

TINY = {
    "model": "lenet300", "data": "digits", "epochs": 2,
    "stages": [{"name": "int8", "technique": "quantize", "config": {"calibration_samples": 128}}],
    "measure": {"runs": 20, "warmup": 2, "accuracy_budget": 5.0},
}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_run_folder_has_measured_stages(tmp_path):
    out = tmp_path / "run"
    result = run_recipe(TINY, out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    assert names == ["baseline", "int8"]
    for stage in metrics["stages"]:
        for key in ("accuracy", "size_bytes", "latency_ms", "onnx"):
            assert stage[key] is not None
        assert (out / stage["onnx"]).stat().st_size == stage["size_bytes"]
    base, int8 = metrics["stages"]
    assert base["accuracy"] > 0.8
    assert int8["size_bytes"] < base["size_bytes"] / 2.5  # int8 weights in the file
    assert abs(int8["accuracy"] - base["accuracy"]) < 0.05
    assert sum(int8["runtime"]["int8_ops"].values()) >= 3
    assert int8["technique_stats"]["quant"]["calibration_samples"] == 128
    speed = int8["technique_stats"]["speed"]  # the guard measured every placement it tried
    assert speed["chosen"] in speed["speedups"] and len(speed["speedups"]) >= 2
    best = max(speed["speedups"].values())
    assert speed["chosen"] == "all layers" or speed["speedups"][speed["chosen"]] == best
    assert "| int8 |" in (out / "summary.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    assert result.stages[1].speedup["1t"] > 0
    # latency and speedup come from the same interleaved rounds: the table agrees with itself
    assert base["latency_ms"] / int8["latency_ms"] == pytest.approx(int8["speedup"]["1t"])
    assert int8["runtime"]["path"] == "int8.onnx"  # relative to the run folder
    assert not list(tmp_path.glob(".run.*"))  # scratch folder removed


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    import edgeopt.api

    def fail(*args, **kwargs):
        raise DataError("calibration data is empty")

    monkeypatch.setattr(edgeopt.api, "apply_with_stats", fail)  # fails after the baseline was exported
    out = tmp_path / "run"
    with pytest.raises(DataError):
        run_recipe(TINY, out, progress=False)
    assert not out.exists()  # only the hidden scratch folder, kept for --resume
    assert [p.name for p in tmp_path.iterdir()] == [".run.edgeopt.partial"]


def test_unwritable_output_is_refused_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        run_recipe(TINY, blocker, progress=False)
    with pytest.raises(OutputError, match="cannot be written"):
        run_recipe(TINY, blocker / "sub" / "run", progress=False)


def test_each_stage_reports_only_its_own_technique(tmp_path):
    chain = dict(TINY, stages=[
        {"name": "pruned", "technique": "prune",
         "config": {"sparsity": 0.5, "structure": "unstructured", "finetune_epochs": 0}},
        {"name": "clustered", "technique": "cluster", "config": {"clusters": 8}},
        {"name": "int8", "technique": "quantize", "speed_guard": False,
         "config": {"calibration_samples": 64}},
        {"name": "distilled", "technique": "distill", "from": "baseline", "config": {"epochs": 1}},
    ])
    result = run_recipe(chain, tmp_path / "run", progress=False)
    stats = {s.name: sorted(s.technique_stats) for s in result.stages}
    assert stats == {"baseline": [], "pruned": ["prune"], "clustered": ["cluster"],
                     "int8": ["quant"], "distilled": ["distill"]}
    pruned = next(s for s in result.stages if s.name == "pruned")
    assert pruned.technique_stats["prune"]["target_sparsity"] == 0.5
