"""Loading the user's model: factory import, weights without unpickling, clear errors."""

import pickle

import pytest
import torch
from user_files import trained_weights, write_model

from edgeopt.errors import ConfigError, ConfigTypeError
from edgeopt.sources.models import load_model, parse_model_source, read_state_dict


def source(tmp_path, **raw):
    return parse_model_source(raw, tmp_path)


def test_factory_with_weights_loads_exact_tensors(tmp_path):
    write_model(tmp_path)
    weights = trained_weights(tmp_path)
    model = load_model(source(tmp_path, factory="user_net:build", weights=weights.name,
                              kwargs={"num_classes": 4}))
    expected = read_state_dict(weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name])
    assert not model.training


def test_torch_state_dict_file_loads_and_nested_checkpoints_unwrap(tmp_path):
    write_model(tmp_path)
    state = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4)).state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    model = load_model(source(tmp_path, factory="user_net:build", weights="ckpt.pt"))
    assert torch.equal(model.state_dict()["1.weight"], state["1.weight"])


class _Payload:
    def __reduce__(self):  # would run code when unpickled
        return (open, ("/tmp/edgeopt-pwned", "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    write_model(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"1.weight": _Payload()}, f)
    marker = __import__("pathlib").Path("/tmp/edgeopt-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="recipe.model.weights.*(refused|cannot be read)"):
        load_model(source(tmp_path, factory="user_net:build", weights="evil.pt"))
    assert not marker.exists()


@pytest.mark.parametrize("raw,message", [
    ({"factory": "user_net"}, "recipe.model.factory must be a 'module:function'"),
    ({"factory": "user_net:build", "hf": "x"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"factory": "user_net:build", "weights": "missing.safetensors"}, "does not exist"),
    ({"factory": "user_net:build", "weights": "w.txt"}, "recipe.model.weights must be"),
    ({"factory": "user_net:build", "input_shape": [3, 0]}, "recipe.model.input_shape"),
    ({"factory": "user_net:build", "colour": 1}, "recipe.model.colour is not a known key"),
    ({"hf": "no/such/folder"}, "recipe.model.hf: folder"),
])
def test_bad_model_mappings_name_the_field(tmp_path, raw, message):
    with pytest.raises(ConfigError, match=message):
        source(tmp_path, **raw)


def test_kwargs_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigTypeError, match="recipe.model.kwargs"):
        source(tmp_path, factory="user_net:build", kwargs=[1, 2])


@pytest.mark.parametrize("factory,message", [
    ("nonexistent_module:build", "module 'nonexistent_module' cannot be imported"),
    ("user_net:missing", "has no callable 'missing'"),
    ("user_net:broken", "the factory raised RuntimeError: no GPU found"),
    ("user_net:not_a_model", "must return a torch.nn.Module"),
])
def test_factory_failures_are_one_config_error(tmp_path, factory, message):
    write_model(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_model(source(tmp_path, factory=factory))


def test_weights_that_do_not_fit_name_the_tensor(tmp_path):
    write_model(tmp_path)
    trained_weights(tmp_path, num_classes=3)
    with pytest.raises(ConfigError, match=r"'3.(weight|bias)' has shape \(3"):
        load_model(source(tmp_path, factory="user_net:build", weights="weights.safetensors"))
    trained_weights(tmp_path, inputs=6)
    with pytest.raises(ConfigError, match="missing"):
        load_model(source(tmp_path, factory="user_net:pair", weights="weights.safetensors"))


def test_same_module_name_in_two_folders_is_not_confused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write_model(first)
    (second / "user_net.py").write_text(
        "import torch.nn as nn\n\ndef build():\n    return nn.Linear(3, 5)\n")
    assert isinstance(load_model(source(first, factory="user_net:build")), torch.nn.Sequential)
    assert isinstance(load_model(source(second, factory="user_net:build")), torch.nn.Linear)


def test_local_transformers_folder_loads_offline(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    model = load_model(source(tmp_path, hf="bert"))
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    out = model(ids)
    assert out.shape == (2, 16)  # mean-pooled sentence embedding
    # padding does not change the embedding of a sentence
    assert torch.allclose(model(ids[:1, :3]), out[:1], atol=1e-5)
