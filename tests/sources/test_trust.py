"""Trust boundaries: no load path unpickles user files, and a recipe imports user code only
through its explicit `factory:` keys."""

import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from user_files import write_model

from edgeopt.checkpoint import CheckpointError, load_tensors
from edgeopt.errors import ConfigError, EdgeoptError
from edgeopt.recipes.schema import load_recipe
from edgeopt.sources.models import ModelSource, load_model, read_state_dict


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil(path: Path, marker: Path, wrap=lambda p: {"1.weight": p}) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(wrap(_Payload(marker)), handle)
    return path


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin"])
def test_weights_files_are_never_unpickled(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _evil(tmp_path / name, marker)
    with pytest.raises(ConfigError, match="refused|cannot be read"):
        read_state_dict(path)
    assert not marker.exists()


def test_a_torch_save_zip_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"1.weight": _Payload(marker)}, path)  # the zip format torch.save writes
    with pytest.raises(ConfigError, match="refused|cannot be read"):
        read_state_dict(path)
    assert not marker.exists()


def test_resume_checkpoints_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    for path in (_evil(tmp_path / "a.pt", marker), tmp_path / "b.pt"):
        if path.name == "b.pt":
            torch.save({"modules": _Payload(marker)}, path)
        with pytest.raises(CheckpointError, match="cannot be read safely"):
            load_tensors(path)
    assert not marker.exists()


def test_transformers_folder_with_pickled_weights_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    folder = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    _evil(folder / "pytorch_model.bin", marker, wrap=lambda p: {"embeddings.x": p})
    with pytest.raises(EdgeoptError):
        load_model(ModelSource(hf=folder, root=tmp_path))
    assert not marker.exists()


EVIL_MODULE = """
from pathlib import Path
Path(__file__).with_name("imported").touch()

def build():
    import torch
    return torch.nn.Linear(6, 4)
"""


@pytest.mark.parametrize("field,value", [
    ("model", "evil:build"),
    ("data", "evil:build"),
    ("metric", "evil:build"),
    ("stages", [{"technique": "evil:build"}]),
    ("stages", [{"technique": "prune", "name": "evil"}]),
    ("stages", [{"technique": "prune", "config": {"structure": "evil:build"}}]),
    ("stages", [{"technique": "quantize", "config": {"calibration": "evil:build"}}]),
    ("measure", {"evil": "evil:build"}),
])
def test_only_factory_keys_import_user_code(tmp_path, field, value):
    (tmp_path / "evil.py").write_text(EVIL_MODULE)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": "lenet300", "data": "digits", field: value}))
    try:
        load_recipe(path)
    except EdgeoptError:
        pass
    assert not (tmp_path / "imported").exists()
    assert "evil" not in sys.modules


def test_a_factory_key_is_imported_only_when_the_run_loads_the_model(tmp_path):
    write_model(tmp_path)
    (tmp_path / "evil.py").write_text(EVIL_MODULE)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"factory": "evil:build", "input_shape": [6]},
        "data": {"train": "train.npz", "test": "test.npz"}}))
    try:
        load_recipe(path)  # validation only: nothing is imported yet
    except EdgeoptError:
        pass
    assert not (tmp_path / "imported").exists()
    try:
        load_model(ModelSource(factory="evil:build", root=tmp_path))  # the explicit key
        assert (tmp_path / "imported").exists()
    finally:
        sys.modules.pop("evil", None)
