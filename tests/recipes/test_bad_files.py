"""Bad files and bad environments end as one `error:` line and exit 2, never a traceback or a
half-written run folder: corrupt or truncated weights, ONNX and npz files, NaN / inf weights,
empty or mis-shaped data, a model that does not return a tensor, a factory that raises, a
read-only or full output disk."""

import errno
import os

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from user_files import trained_weights, write_model, write_npz

import edgeopt.recipes.run
from edgeopt.cli import main
from edgeopt.errors import OutputError
from edgeopt.recipes import run_recipe

FAST = {"runs": 3, "warmup": 1}

EXTRA_CODE = '''

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 4)

    def forward(self, x):
        return {"logits": self.body(x), "aux": x}


def two_heads():
    return TwoHeads()
'''


def _recipe(folder, **changes):
    write_model(folder)
    with open(folder / "user_net.py", "a") as handle:
        handle.write(EXTRA_CODE)
    trained_weights(folder)
    write_npz(folder)
    recipe = {"model": {"factory": "user_net:build", "weights": "weights.safetensors",
                        "input_shape": [6]},
              "data": {"train": "train.npz", "test": "test.npz"},
              "stages": [{"name": "int8", "technique": "quantize", "speed_guard": False,
                          "config": {"calibration_samples": 32}}],
              "measure": FAST}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _refused(folder, recipe, *words):
    """Run the CLI; it must print one error line with `words` and leave no run folder."""
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(main, ["optimize", str(recipe), "--out", str(folder / "run"),
                                       "--quiet"])
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert sorted(p.name for p in folder.iterdir()) == before  # no run or scratch folder
    return errors[0]


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_and_corrupt_weights(tmp_path):
    recipe = _recipe(tmp_path)
    _truncate(tmp_path / "weights.safetensors")
    _refused(tmp_path, recipe, "recipe.model.weights", "cannot be read")
    (tmp_path / "weights.safetensors").write_bytes(os.urandom(300))
    _refused(tmp_path, recipe, "recipe.model.weights")
    torch.save(torch.nn.Linear(6, 4).state_dict(), tmp_path / "w.pt")
    _truncate(tmp_path / "w.pt")
    _refused(tmp_path, _recipe(tmp_path, model={"weights": "w.pt"}), "recipe.model.weights")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, value):
    recipe = _recipe(tmp_path)
    state = load_file(str(tmp_path / "weights.safetensors"))
    state["1.weight"][0, 0] = value
    save_file(state, str(tmp_path / "weights.safetensors"))
    _refused(tmp_path, recipe, "NaN or inf", "recipe.model")


def test_truncated_npz_and_garbage_npz(tmp_path):
    recipe = _recipe(tmp_path)
    _truncate(tmp_path / "train.npz")
    _refused(tmp_path, recipe, "recipe.data.train")
    (tmp_path / "train.npz").write_bytes(b"PK\x03\x04" + os.urandom(100))
    _refused(tmp_path, recipe, "recipe.data.train")


@pytest.mark.parametrize("x,words", [
    (np.zeros((0, 6), np.float32), ("recipe.data.train",)),  # empty
    (np.zeros((50, 5), np.float32), ("recipe.data",)),  # the model wants 6 features
    (np.zeros((50,), np.float32), ("recipe.data.train",)),  # no sample axis
    (np.full((50, 6), np.nan, np.float32), ("recipe.data.train",)),  # not finite
])
def test_empty_or_misshaped_data(tmp_path, x, words):
    recipe = _recipe(tmp_path)
    np.savez(tmp_path / "train.npz", x=x, y=np.zeros(len(x), np.int64))
    _refused(tmp_path, recipe, *words)


def test_model_output_not_a_tensor_and_factory_that_raises(tmp_path):
    message = _refused(tmp_path, _recipe(tmp_path, model={"factory": "user_net:two_heads",
                                                         "weights": None}),
                       "recipe.model", "tensor")
    assert "dict" in message
    _refused(tmp_path, _recipe(tmp_path, model={"factory": "user_net:broken"}),
             "recipe.model.factory", "no GPU found")


def test_corrupt_onnx_file_is_refused_by_measure_and_report(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" + os.urandom(64))
    result = CliRunner().invoke(main, ["measure", str(bad), "--data", "digits"])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "model.onnx" in result.output and "Traceback" not in result.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"stages": [{"name": "a", "onnx": "a.onnx"}')  # truncated
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output


def test_read_only_output_directory(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: (
        False if str(p) == str(out) and mode & os.W_OK else real(p, mode, **k)))
    result = CliRunner().invoke(main, ["optimize", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "cannot be written" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".run*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder(tmp_path):
    recipe = _recipe(tmp_path)
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["optimize", str(recipe), "--out",
                                           str(parent / "run"), "--quiet"])
    finally:
        parent.chmod(0o755)
    assert result.exit_code == 2 and "cannot be written" in result.output, result.output
    assert list(parent.iterdir()) == []


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_exporting_leaves_nothing(tmp_path, monkeypatch):
    import edgeopt.export.onnx

    recipe = _recipe(tmp_path)
    monkeypatch.setattr(edgeopt.export.onnx, "export_onnx", _disk_full)
    _refused(tmp_path, recipe, "No space left on device", "--resume")


def test_full_disk_at_the_end_keeps_the_work_for_resume(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(edgeopt.recipes.run, "_write_outputs", _disk_full)
        with pytest.raises(OutputError, match="No space left on device"):
            run_recipe(recipe, out, progress=False)
    assert not out.exists()
    assert (tmp_path / ".run.edgeopt.partial" / ".resume" / "stages" / "int8.json").is_file()
    result = run_recipe(recipe, out, progress=False, resume=True)  # space freed: finish it
    assert [s.name for s in result.stages] == ["baseline", "int8"]
    assert (out / "metrics.json").is_file() and not list(tmp_path.glob(".run*"))
