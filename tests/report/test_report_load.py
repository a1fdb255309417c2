"""Reading run folders: finished, interrupted, older versions, and folders that are not runs."""

import json

import pytest
from report_samples import full_metrics

from edgeopt.errors import EdgeoptError
from edgeopt.report import RunFolderError, load_run, rebuild_report
from edgeopt.report.load import normalize


def run_folder(path, metrics, onnx=("baseline", "int8")):
    path.mkdir(parents=True, exist_ok=True)
    for name in onnx:
        (path / f"{name}.onnx").write_bytes(b"x" * 100)
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_error_is_a_value_error_in_the_family():
    assert issubclass(RunFolderError, EdgeoptError) and issubclass(RunFolderError, ValueError)


def test_missing_or_empty_folder_is_not_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="not a run folder: no such directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no metrics.json and no exported model"):
        load_run(tmp_path / "empty")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match="not a run folder: it is a file"):
        load_run(tmp_path / "metrics.json")


def test_hint_points_at_an_interrupted_runs_scratch_folder(tmp_path):
    (tmp_path / ".run.x1y2.partial").mkdir()
    with pytest.raises(RunFolderError, match=r"\.run\.x1y2\.partial"):
        load_run(tmp_path / "run")


def test_interrupted_run_with_only_onnx_files_renders_them(tmp_path):
    folder = run_folder(tmp_path / "run", None)
    (folder / "int8.onnx.data").write_bytes(b"y" * 50)
    run = load_run(folder)
    stages = run.metrics["stages"]
    assert [s["name"] for s in stages] == ["baseline", "int8"]
    assert stages[1]["size_bytes"] == 150  # external data counts
    assert stages[0]["missing"] == ["accuracy", "latency_ms"]
    assert "metrics.json is missing" in run.problems[0] and not run.complete


def test_unreadable_metrics(tmp_path):
    folder = run_folder(tmp_path / "a", None, onnx=())
    (folder / "metrics.json").write_text('{"stages": [')
    with pytest.raises(RunFolderError, match="cannot be read as JSON"):
        load_run(folder)
    folder = run_folder(tmp_path / "b", None)
    (folder / "metrics.json").write_text('{"stages": [')
    assert "metrics.json is unreadable" in load_run(folder).problems[0]
    (folder / "metrics.json").write_text('{"rows": []}')
    with pytest.raises(RunFolderError, match="list of 'stages'"):
        load_run(folder)


def test_finished_run_is_complete(tmp_path):
    metrics = full_metrics()
    folder = run_folder(tmp_path / "run", metrics, onnx=[s["name"] for s in metrics["stages"]])
    run = load_run(folder)
    assert run.complete, run.problems
    assert len(run.metrics["stages"]) == 6


def test_unfinished_and_incomplete_stages_are_reported(tmp_path):
    metrics = full_metrics()
    del metrics["stages"][3:]
    del metrics["stages"][2]["latency_ms"]
    run = load_run(run_folder(tmp_path / "run", metrics, onnx=["baseline", "pruned"]))
    assert run.metrics["unfinished"] == ["int8_qat", "lowrank", "clustered"]
    assert "stage distilled: no latency_ms recorded" in run.problems
    assert "stage distilled: distilled.onnx is missing from the folder" in run.problems
    assert "stage lowrank (in the recipe) did not finish" in run.problems


def test_older_metrics_with_bad_types_are_normalized():
    raw = {"stages": [{"name": "baseline", "accuracy": "0.9", "size_bytes": 10, "latency_ms": 1,
                       "onnx": "b.onnx", "speedup": {"1t": "fast", "2t": 1.5},
                       "technique_stats": [], "macs": True},
                      "garbage", {"accuracy": float("nan")}], "warnings": "oops"}
    run = normalize(raw)
    first, second = run.metrics["stages"]
    assert first["accuracy"] is None and first["macs"] is None
    assert first["speedup"] == {"2t": 1.5} and first["technique_stats"] == {}
    assert second["name"] == "stage 3" and second["accuracy"] is None
    assert run.metrics["warnings"] == [] and run.metrics["unfinished"] == []
    assert "stage #2 is not a mapping; skipped" in run.problems


def test_bare_list_of_stages_is_accepted(tmp_path):
    folder = run_folder(tmp_path / "run", [{"name": "baseline", "accuracy": 0.9,
                                            "size_bytes": 1, "latency_ms": 1.0,
                                            "onnx": "baseline.onnx"}])
    assert load_run(folder).complete


def test_rebuild_writes_page_and_twin(tmp_path, fast_figures):
    folder = run_folder(tmp_path / "run", full_metrics(), onnx=())
    run = rebuild_report(folder)
    html = (folder / "report.html").read_text()
    twin = json.loads((folder / "figures.json").read_text())
    assert twin["problems"] == run.problems and twin["figures"]
    assert all(f"id='fig-{f['id']}'" in html for f in twin["figures"])
    assert (folder / "report.html").stat().st_mode & 0o777 == 0o644


def test_rebuild_on_bad_folder_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError):
        rebuild_report(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_live_objects_render_like_their_json():
    import numpy as np

    raw = {"stages": [{"name": "s", "accuracy": np.float32(0.5), "size_bytes": np.int64(7),
                       "latency_ms": 1.0, "onnx": "s.onnx",
                       "technique_stats": {"prune": {"layers": ({"name": "a",
                                                                 "sparsity": np.float64(0.25)},),
                                                     "masks": {"a": np.eye(2)},
                                                     "kinds": {"x"}}}}]}
    stage = normalize(raw).metrics["stages"][0]
    assert stage["accuracy"] == 0.5 and stage["size_bytes"] == 7
    stats = stage["technique_stats"]["prune"]
    assert stats["layers"] == [{"name": "a", "sparsity": 0.25}]
    assert stats["masks"]["a"] == [[1.0, 0.0], [0.0, 1.0]] and stats["kinds"] == ["x"]
