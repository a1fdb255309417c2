"""Tiny searches end to end: the pareto.json contract, best/, resume, two workers on SQLite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from edgeopt.search import SearchSettings, search

RECIPE = {"model": "lenet300", "data": "digits", "epochs": 1,
          "measure": {"runs": 3, "warmup": 1}}
FAST = {"finetune_samples": 96}


def test_search_writes_the_pareto_contract_and_a_best_run_folder(tmp_path):
    out = tmp_path / "search"
    result = search(RECIPE, target="x86-ort", out_dir=out, trials=2, progress=False,
                    settings=SearchSettings(**FAST))
    content = json.loads((out / "pareto.json").read_text())
    assert content == json.loads(json.dumps(result))
    assert len(content["trials"]) == 2 and content["pareto"]
    for point in content["pareto"]:
        assert {"accuracy", "flash_bytes", "ram_bytes", "latency_ms", "fits", "policy"} <= set(point)
        assert 0 <= point["accuracy"] <= 1 and point["latency_ms"] > 0
    int8, int4 = content["trials"]  # a new study starts from the uniform policies
    assert set(int8["policy"]["bits"].values()) == {8} and set(int4["policy"]["bits"].values()) == {4}
    assert int4["flash_bytes"] < int8["flash_bytes"]
    best = content["best"]
    assert best["fits"] and best["run"] == "best" and 0 <= best["test_accuracy"] <= 1
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["baseline", "search"]
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_a_budget_nothing_fits_trains_nothing(tmp_path):
    result = search(RECIPE, target="cortex-m4", flash="1KiB", out_dir=tmp_path / "s", trials=1,
                    progress=False, settings=SearchSettings(**FAST))
    assert result["best"] is None and result["trials"][0]["accuracy"] is None
    assert not result["trials"][0]["fits"] and not (tmp_path / "s" / "best").exists()


def test_an_interrupted_search_resumes_from_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    settings = SearchSettings(**FAST, run_best=False)
    first = search(RECIPE, target="cortex-m4", out_dir=tmp_path / "a", trials=1,
                   storage=storage, settings=settings, progress=False)
    second = search(RECIPE, target="cortex-m4", out_dir=tmp_path / "a", trials=2,
                    storage=storage, settings=settings, progress=False)
    assert [t["number"] for t in second["trials"]] == [0, 1]
    assert second["trials"][0] == first["trials"][0]  # finished trials are not redone


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    (tmp_path / "recipe.yaml").write_text(json.dumps(RECIPE))
    command = [sys.executable, "-m", "edgeopt.cli", "search", str(tmp_path / "recipe.yaml"),
               "--target", "cortex-m4", "--trials", "3", "--storage", storage, "--quiet",
               "--no-best", "--finetune-samples", "96"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*command, "--out", str(tmp_path / f"w{i}")], env=env,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()
    study = optuna.load_study(study_name="edgeopt-search", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    # one shared study: 3 trials (4 when both start a last one together), not 3 per worker;
    # which worker ran which trial depends on start-up timing, so it is not asserted
    assert 3 <= len(done) <= 4
    # the uniform seeds are enqueued once: no policy is trained twice
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)
    assert all(t.user_attrs["worker"] for t in done)
    last = max((json.loads((tmp_path / f"w{i}" / "pareto.json").read_text()) for i in range(2)),
               key=lambda c: len(c["trials"]))
    assert len(last["trials"]) == len(done)


@pytest.mark.parametrize("args, option", [
    (["--target", "esp32"], "--target"),
    (["--target", "cortex-m4", "--flash", "256 kilobytes"], "--flash"),
    (["--target", "cortex-m4", "--ram", "-1KiB"], "--ram"),
    (["--target", "cortex-m4", "--trials", "0"], "--trials"),
    (["--target", "cortex-m4", "--storage", "mongodb://x/y"], "--storage"),
])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, args, option):
    from click.testing import CliRunner

    from edgeopt.cli import main

    out = tmp_path / "out"
    argv = ["search", "--out", str(out), *args]
    if "--trials" not in args:
        argv += ["--trials", "3"]
    result = CliRunner().invoke(main, argv)
    lines = [line for line in result.stderr.splitlines() if line]
    assert result.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith("error:") and option in lines[0]
    assert not out.exists() and list(Path(tmp_path).iterdir()) == []


def test_best_run_reads_the_recipes_own_files_from_the_recipe_folder(tmp_path, monkeypatch):
    import yaml

    from helpers import write_labeled_images

    folder = tmp_path / "project"
    write_labeled_images(folder, 8, {"train": 160, "test": 40})
    recipe = {**RECIPE, "data": {"train": "train.npz", "test": "test.npz"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: its relative paths must still resolve
    result = search(folder / "recipe.yaml", target="x86-ort", out_dir=tmp_path / "s", trials=1,
                    progress=False, settings=SearchSettings(**FAST))
    assert result["best"]["run"] == "best" and (tmp_path / "s" / "best" / "metrics.json").exists()


def _completed(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute(
                "SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked a moment
        return 0


def test_ctrl_c_stops_a_search_with_exit_130_and_keeps_its_trials(tmp_path):
    import functools
    import signal
    import time

    (tmp_path / "recipe.yaml").write_text(json.dumps(RECIPE))
    storage = f"sqlite:///{tmp_path}/study.db"
    command = [sys.executable, "-m", "edgeopt.cli", "search", str(tmp_path / "recipe.yaml"),
               "--target", "cortex-m4", "--trials", "50", "--storage", storage, "--quiet",
               "--no-best", "--finetune-samples", "96", "--out", str(tmp_path / "out")]
    # Ctrl-C's default action in the child, whatever the test runner's (a background job
    # ignores it)
    log = (tmp_path / "stderr.log").open("w")  # a file: a full pipe would stall the search
    proc = subprocess.Popen(command, stderr=log, text=True,
                            preexec_fn=functools.partial(signal.signal, signal.SIGINT,
                                                         signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while _completed(tmp_path / "study.db") < 2 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 130, stderr
    assert "interrupted; finished trials are kept in sqlite:///" in stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
    study = optuna.load_study(study_name="edgeopt-search", storage=storage)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") >= 2
    queued = [t.system_attrs.get("fixed_params") for t in study.trials
              if t.state.name == "WAITING"]
    for trial in study.trials:  # a trial the signal stopped is queued to run again
        if trial.state.name == "FAIL":
            assert trial.user_attrs.get("interrupted") and trial.params in queued


def _unlabeled_project(folder: Path, metric: str) -> Path:
    """A user's own model (a factory, used as given) and images without labels."""
    import numpy as np
    import yaml

    folder.mkdir()
    (folder / "tiny_models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 40)):
        np.savez(folder / f"{split}.npz", x=rng.normal(size=(n, 1, 8, 8)).astype(np.float32))
    recipe = {"model": {"factory": "tiny_models:build", "input_shape": [1, 8, 8]},
              "data": {"train": "train.npz", "test": "test.npz"}, "metric": metric,
              "measure": {"runs": 3, "warmup": 1}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def test_a_users_model_without_labels_is_searched_on_its_metric(tmp_path):
    # no labels: trials recover by distillation from the baseline, then PTQ, and score the
    # recipe's metric (agreement with the baseline) instead of failing every trial
    recipe = _unlabeled_project(tmp_path / "project", "agreement")
    result = search(recipe, target="cortex-m4", out_dir=tmp_path / "s", trials=3,
                    progress=False, settings=SearchSettings(**FAST))
    assert result["metric"] == "agreement"
    scores = [t["accuracy"] for t in result["trials"]]
    assert all(s is not None and 0 <= s <= 1 for s in scores) and scores[0] > 0.5
    assert result["trials"][2]["policy"]["keep"] and min(
        result["trials"][2]["policy"]["keep"].values()) < 1  # a pruned policy was recovered
    best = result["best"]
    assert 0 <= best["test_accuracy"] <= 1
    metrics = json.loads((tmp_path / "s" / "best" / "metrics.json").read_text())
    assert metrics["stages"][-1]["metric"] == "agreement"


def test_a_search_refuses_a_lower_is_better_metric(tmp_path):
    from edgeopt.errors import ConfigError

    recipe = _unlabeled_project(tmp_path / "project", "mse")
    with pytest.raises(ConfigError, match="recipe.metric"):
        search(recipe, target="cortex-m4", out_dir=tmp_path / "s", trials=1, progress=False,
               settings=SearchSettings(**FAST))
    assert not (tmp_path / "s").exists()


def test_a_transformers_model_is_searched(tmp_path):
    # BERT slices by sizes read off tensors: torch.fx cannot trace it (the cost model falls
    # back to torch.export's graph); x86-ort's latency predictor on token ids is tested in
    # test_latency.py (its export and kernel timings of a BERT take a minute)
    import numpy as np
    import yaml
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("test", 30)):
        x = rng.integers(1, 100, size=(n, 8)).astype(np.int64)
        np.savez(tmp_path / f"{split}.npz", x=x, y=(x[:, 0] % 3).astype(np.int64))
    recipe = {"model": {"hf": "bert"}, "data": {"train": "train.npz", "test": "test.npz"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = search(tmp_path / "recipe.yaml", target="cortex-m4", out_dir=tmp_path / "s",
                    trials=1, progress=False, settings=SearchSettings(**FAST, run_best=False))
    trial = result["trials"][0]
    assert trial["state"] == "complete" and 0 <= trial["accuracy"] <= 1
    assert trial["ram_bytes"] > 0 and trial["flash_bytes"] > 0


def test_a_factorized_trial_is_costed_as_its_best_run_is_built(tmp_path):
    from edgeopt.search.study import make_study

    storage = f"sqlite:///{tmp_path}/study.db"
    settings = SearchSettings(**FAST)
    study = make_study(settings, ("accuracy", "flash_bytes", "ram_bytes"), storage)
    study.enqueue_trial({"bits:fc1": 4, "bits:fc2": 8, "bits:fc3": 8, "keep:fc1": 0.75,
                         "keep:fc2": 1.0, "clusters": 0, "energy": 0.8})
    result = search(RECIPE, target="cortex-m4", out_dir=tmp_path / "s", trials=1,
                    storage=storage, settings=settings, progress=False)
    (trial,) = result["trials"]
    assert trial["policy"]["energy"] == 0.8 and trial["fits"]
    best = json.loads((tmp_path / "s" / "best" / "metrics.json").read_text())
    assert [s["name"] for s in best["stages"]] == ["baseline", "prune", "lowrank", "search"]
    lowrank = best["stages"][2]
    assert lowrank["params"] < best["stages"][1]["params"]  # some layer was factorized
    # the trial's predicted flash is what the best run's int8 C image stores
    assert best["stages"][-1]["target_fit"]["flash_bytes"] == trial["flash_bytes"]
    assert result["best"]["test_accuracy"] > 0.5
