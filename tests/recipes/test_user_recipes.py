"""Your own model and data through recipes and the CLI (API.md, "Your own model and data")."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from user_files import trained_weights, write_model, write_npz

from edgeopt.cli import main
from edgeopt.errors import ConfigError
from edgeopt.recipes import run_recipe
from edgeopt.sources.models import read_state_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model"
FAST = {"runs": 20, "warmup": 2}


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_worked_example_runs_through_the_cli_without_retraining(tmp_path):
    folder = tmp_path / "own_model"
    shutil.copytree(EXAMPLE, folder)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["measure"] = FAST  # shorter timing; the model, data and stages are the example's
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = cli("optimize", str(folder / "recipe.yaml"), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    base, int8 = metrics["stages"]
    # the baseline is the given weights, as given: its ONNX accuracy is theirs in PyTorch
    import sys
    sys.path.insert(0, str(folder))
    from my_models import build

    model = build(num_classes=10).eval()
    model.load_state_dict(read_state_dict(folder / "weights.safetensors"))
    test = np.load(folder / "test.npz")
    with torch.no_grad():
        expected = (model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean()
    assert base["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert base["metric"] == "top1" and base["score"] == base["accuracy"]
    assert int8["accuracy"] > expected - 0.02
    assert int8["size_bytes"] < base["size_bytes"]
    if int8["technique_stats"]["speed"]["chosen"] == "all layers":  # the speed guard may keep
        assert int8["size_bytes"] < base["size_bytes"] / 2.5  # a layer float where it pays
    assert metrics["model"] == "build" and metrics["data"] == "train.npz"


def _recipe(tmp_path, **changes):
    write_model(tmp_path)
    trained_weights(tmp_path)
    recipe = {"model": {"factory": "user_net:build", "weights": "weights.safetensors",
                        "input_shape": [6]},
              "data": {"train": "train.npz", "test": "test.npz"},
              "stages": [{"name": "int8", "technique": "quantize", "speed_guard": False}],
              "measure": FAST, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("metric,baseline_score", [("agreement", 1.0), ("cosine", 1.0),
                                                   ("mse", 0.0)])
def test_label_free_data_is_scored_against_the_baseline(tmp_path, metric, baseline_score):
    write_npz(tmp_path, labels=False)
    result = run_recipe(_recipe(tmp_path, metric=metric), tmp_path / "run", progress=False)
    base, int8 = result.stages
    assert base.accuracy is None and base.metric == metric
    assert base.score == pytest.approx(baseline_score, abs=1e-6)
    if metric == "mse":
        assert 0 < int8.score < 0.05 and int8.accuracy_drop is None
    else:
        assert 0.9 < int8.score <= 1.0 and int8.accuracy_drop < 10
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert {"agreement": "agree", "cosine": "cos", "mse": "mse"}[metric] in summary


def test_default_metric_without_labels_is_agreement(tmp_path):
    write_npz(tmp_path, labels=False)
    result = run_recipe(_recipe(tmp_path), tmp_path / "run", progress=False)
    assert result.stages[0].metric == "agreement"


def test_zoo_model_trains_on_user_data(tmp_path):
    train, test = write_npz(tmp_path)
    recipe = {"model": "lenet300", "data": {"train": str(train), "test": str(test)},
              "epochs": 5, "stages": [], "measure": FAST}
    result = run_recipe(recipe, tmp_path / "run", progress=False)
    assert result.stages[0].accuracy > 0.8  # separable blobs: learned, not random (0.25)


def test_zoo_model_refuses_unlabeled_user_data(tmp_path):
    train, test = write_npz(tmp_path, labels=False)
    recipe = {"model": "lenet300", "data": {"train": str(train), "test": str(test)},
              "metric": "agreement"}
    with pytest.raises(ConfigError, match="needs class labels"):
        run_recipe(recipe, tmp_path / "run", progress=False)


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("change,message", [
    ({"model": {"factory": "user_net:broken"}}, "recipe.model.factory: the factory raised"),
    ({"model": {"factory": "missing_mod:build"}}, "recipe.model.factory: module"),
    ({"model": {"factory": "user_net:build", "weights": "nope.pt"}},
     "recipe.model.weights: file"),
    ({"model": {"factory": "user_net:build", "input_shape": [3, 8, 8]}},
     "recipe.model.input_shape is [3, 8, 8]"),
    ({"model": {"factory": "user_net:build", "kwargs": {"inputs": 5}}},
     "recipe.model does not run on recipe.data samples"),
    ({"model": {"factory": "user_net:pair"}}, "recipe.model does not run"),
    ({"metric": "f1"}, "recipe.metric must be one of"),
    ({"epochs": 3}, "never retrained"),
    ({"data": {"train": "train.npz"}}, "recipe.data.test is required"),
])
def test_user_recipe_failures_are_one_error_line_and_no_output(tmp_path, change, message):
    write_npz(tmp_path)
    recipe = _recipe(tmp_path, **change)
    out = tmp_path / "run"
    assert message in _error(cli("optimize", str(recipe), "--out", str(out), "--quiet"))
    assert not out.exists() and not list(tmp_path.glob(".run.*"))


def test_top1_on_unlabeled_data_is_refused(tmp_path):
    write_npz(tmp_path, labels=False)
    recipe = _recipe(tmp_path, metric="top1")
    message = _error(cli("optimize", str(recipe), "--out", str(tmp_path / "run")))
    assert "recipe.metric top1 needs class labels" in message
