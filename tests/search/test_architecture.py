"""The architecture level: zoo families built from an architecture, TinyNAS space selection,
and tiny searches (one training epoch, a couple of trials) end to end."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import edgeopt as eo
from edgeopt.search import SearchSettings, make_budget, search
from edgeopt.search.architecture import (
    Arch,
    arch_costs,
    build,
    candidate_spaces,
    distill_loss,
    repeated,
    resize_splits,
    select_space,
)

RECIPE = {"model": "dscnn", "data": "digits", "epochs": 1, "measure": {"runs": 3, "warmup": 1}}
TINY = {"arch_epochs": 1, "space_samples": 1, "finetune_samples": 64}


@pytest.mark.parametrize("family, shape, zoo_name", [
    ("dscnn", (1, 28, 28), "dscnn"), ("resnet8", (1, 28, 28), "resnet8"),
    ("mobilenetv1_vww", (3, 96, 96), "mobilenetv1_vww")])
def test_the_zoo_default_architecture_is_the_zoo_model(family, shape, zoo_name):
    depth = {"dscnn": 4, "resnet8": 3, "mobilenetv1_vww": 13}[family]
    torch.manual_seed(0)
    zoo = eo.zoo.create(zoo_name, shape, 10).state_dict()
    torch.manual_seed(0)
    ours = build(family, 1.0, shape[1], depth, 3, list(shape), 10).state_dict()
    assert list(zoo) == list(ours)
    assert all(torch.equal(zoo[k], ours[k]) for k in zoo)


def test_width_depth_kernel_and_resolution_change_the_model():
    model = build("dscnn", 0.5, 14, 2, 5, [1, 28, 28], 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 2 and convs[0].out_channels == 32
    assert convs[1].kernel_size == (5, 5) and convs[1].groups == 32
    assert model(torch.randn(2, 1, 14, 14)).shape == (2, 10)
    resnet = build("resnet8", 0.5, 20, 2, 3, [1, 28, 28], 10)
    assert isinstance(resnet.stage3, torch.nn.Identity) and resnet.fc.in_features == 16
    splits = resize_splits(eo.datasets.load("digits"), 6)
    assert splits.input_shape == (1, 6, 6) and splits.train[0][0].shape == (1, 6, 6)
    assert len(splits.test) == len(eo.datasets.load("digits").test)


def test_distillation_teaches_at_the_teachers_resolution():
    torch.manual_seed(0)
    teacher = build("dscnn", 0.25, 8, 1, 3, [1, 8, 8], 10).eval()
    inputs, logits = torch.randn(4, 1, 4, 4), torch.randn(4, 10)
    targets = torch.tensor([0, 1, 2, 3])
    loss = distill_loss(teacher, (1, 8, 8))(logits, targets, inputs)
    soft = teacher(torch.nn.functional.interpolate(inputs, size=(8, 8), mode="bilinear",
                                                   antialias=True))
    kd = torch.nn.functional.kl_div(torch.log_softmax(logits / 4, 1), torch.log_softmax(soft / 4, 1),
                                    reduction="batchmean", log_target=True) * 16
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(loss, 0.7 * kd + 0.3 * ce, atol=1e-5)


def test_a_repeated_architecture_reuses_the_finished_trial():
    import optuna

    study = optuna.create_study(directions=["maximize"])
    first = study.ask()
    first.suggest_categorical("arch:depth", (1, 2))
    first.set_user_attr("architecture", {"depth": first.params["arch:depth"]})
    first.set_user_attr("accuracy", 0.9)
    first.set_user_attr("worker", "w1")
    assert repeated(first) is None
    study.tell(first, 0.9)
    study.enqueue_trial(first.params)
    again = study.ask()
    again.suggest_categorical("arch:depth", (1, 2))
    assert repeated(again) == {"architecture": first.user_attrs["architecture"], "accuracy": 0.9}
    study.enqueue_trial({"arch:depth": 3 - first.params["arch:depth"]})
    other = study.ask()
    other.suggest_categorical("arch:depth", (1, 2))
    assert repeated(other) is None


def test_the_chosen_space_has_the_most_compute_among_fitting_samples():
    native = (1, 8, 8)
    spaces = candidate_spaces("dscnn", native, widths=(0.25, 1.0), scales=(0.5, 1.0))
    budget = make_budget("cortex-m4", flash="8KiB")
    chosen, rows = select_space(spaces, budget, native, 10, samples=2, bits=8, seed=0)
    assert len(rows) == len(spaces) and sum(r["chosen"] for r in rows) == 1
    fitting = [r for r in rows if r["fitting"]]
    assert fitting and any(not r["fitting"] for r in rows)  # the budget decides
    best = max(fitting, key=lambda r: r["mean_macs_fitting"])
    assert best["chosen"] and (chosen.width_mult, chosen.resolution) == (
        best["width_mult"], best["resolution"])
    # the MACs the table reports are the cost model's, and a wider model costs more flash
    small = arch_costs(Arch("dscnn", 0.25, 8, 2, 3), native, 10, 8)
    wide = arch_costs(Arch("dscnn", 1.0, 8, 2, 3), native, 10, 8)
    assert small.flash_bytes < wide.flash_bytes and small.macs < wide.macs


def test_architecture_search_writes_trials_with_architectures_and_a_best_run(tmp_path):
    out = tmp_path / "s"
    result = search(RECIPE, target="cortex-m4", flash="12KiB", out_dir=out, trials=2,
                    progress=False, settings=SearchSettings(level="architecture", **TINY))
    content = json.loads((out / "pareto.json").read_text())
    assert content == json.loads(json.dumps(result))
    chosen = [s for s in content["architecture"]["spaces"] if s["chosen"]]
    assert len(chosen) == 1 and content["architecture"]["level"] == "architecture"
    for trial in content["trials"]:
        arch = trial["architecture"]
        assert (arch["width_mult"], arch["resolution"]) == (chosen[0]["width_mult"],
                                                            chosen[0]["resolution"])
        assert set(trial["policy"]["bits"].values()) == {8} and not trial["policy"]["keep"]
    first = content["trials"][0]
    # a new study starts from the chosen space's largest fitting sample
    assert {k: first["architecture"][k] for k in ("depth", "kernel")} == chosen[0][
        "largest_fitting"] and first["fits"]
    best = content["best"]
    assert best["fits"] and best["flash_bytes"] <= 12 * 1024 and 0 <= best["test_accuracy"] <= 1
    recipe = yaml.safe_load((out / "architecture.yaml").read_text())
    assert recipe["model"]["kwargs"]["depth"] == best["architecture"]["depth"]
    assert recipe["data"]["kwargs"]["resolution"] == best["architecture"]["resolution"]
    assert "Architecture spaces (dscnn)" in (out / "report.html").read_text()
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["baseline", "search"]


def test_both_levels_search_the_policy_of_each_architecture(tmp_path):
    result = search(RECIPE, target="cortex-m4", flash="12KiB", out_dir=tmp_path / "s",
                    trials=1, progress=False,
                    settings=SearchSettings(level="both", run_best=False, distill=True, **TINY))
    trial = result["trials"][0]
    model = build(**trial["architecture"], input_shape=[1, 8, 8], num_classes=10)
    layers = [n for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert list(trial["policy"]["bits"]) == layers
    assert set(trial["policy"]["bits"].values()) <= {4, 8}


@pytest.mark.parametrize("args, option", [
    (["--level", "network"], "--level"),
    (["--level", "architecture", "--arch-epochs", "0"], "--arch-epochs"),
    (["--level", "both", "--space-samples", "0"], "--space-samples"),
    (["--level", "architecture", "RECIPE"], "--level"),  # lenet300: not a searchable family
])
def test_bad_architecture_options_are_one_error_line_and_nothing_written(tmp_path, args, option):
    from click.testing import CliRunner

    from edgeopt.cli import main

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "r.yaml").write_text(json.dumps({"model": "lenet300", "data": "digits"}))
    args = [str(recipes / "r.yaml") if a == "RECIPE" else a for a in args]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["search", "--target", "cortex-m4", "--trials", "2",
                                       "--out", str(out), *args])
    lines = [line for line in result.stderr.splitlines() if line]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and option in lines[0]
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["recipes"]


def test_the_architecture_level_searches_the_users_own_labeled_images(tmp_path, monkeypatch):
    from helpers import write_labeled_images

    folder = tmp_path / "project"
    write_labeled_images(folder, 12, {"train": 240, "test": 60})
    recipe = {"model": "dscnn", "data": {"train": "train.npz", "test": "test.npz"},
              "epochs": 1, "measure": {"runs": 3, "warmup": 1}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: its relative paths must still resolve
    out = tmp_path / "s"
    result = search(folder / "recipe.yaml", target="cortex-m4", flash="12KiB", out_dir=out,
                    trials=1, progress=False, settings=SearchSettings(level="architecture",
                                                                      **TINY))
    best = result["best"]
    assert best["fits"] and 0 <= best["test_accuracy"] <= 1
    data = yaml.safe_load((out / "architecture.yaml").read_text())["data"]
    assert data["factory"].endswith(":resized_user_data")
    assert data["kwargs"]["root"] == str(folder) and data["kwargs"]["resolution"] == best[
        "architecture"]["resolution"]


def test_the_architecture_level_refuses_a_metric_other_than_top1(tmp_path):
    # candidates train from scratch on class labels: they cannot be scored by agreement with
    # a baseline they never saw
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="--level.*recipe.metric is agreement, not top1"):
        search({**RECIPE, "metric": "agreement"}, target="cortex-m4", out_dir=tmp_path / "s",
               trials=1, progress=False, settings=SearchSettings(level="architecture", **TINY))
    assert not (tmp_path / "s").exists()
