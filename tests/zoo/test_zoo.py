from __future__ import annotations

import json
import time

import pytest
import torch
import torch.fx
from torch import nn

from edgeopt import datasets, zoo
from edgeopt.errors import ModelError, OutputError

NATURAL = {"lenet300": "mnist5k", "lenet5": "mnist5k", "dscnn": "mnist5k", "resnet8": "mnist5k",
           "tcn1d": "basic-motions"}
CASES = [(m, d) for m in zoo.names() for d in datasets.names()
         if m == "lenet300" or (m == "tcn1d") == (d == "basic-motions")]


def test_names():
    assert set(NATURAL) <= set(zoo.names())


@pytest.mark.parametrize(("name", "data"), CASES)
def test_forward_and_fx_trace(name, data):
    shape, num_classes = datasets.spec(data)
    torch.manual_seed(0)
    net = zoo.create(name, shape, num_classes).eval()
    x = torch.randn(3, *shape)
    out = net(x)
    width = x[0].numel() if name in zoo.catalog.RECONSTRUCTION_MODELS else num_classes
    assert out.shape == (3, width)
    traced = torch.fx.symbolic_trace(net)
    assert torch.allclose(traced(x), out)
    ops = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert torch.nn.functional.relu not in ops  # ReLUs are modules, so fusion can find them
    has_bn = any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in net.modules())
    assert has_bn == (name not in {"lenet300", "lenet5"})


def test_init_is_deterministic_for_a_seed():
    torch.manual_seed(7)
    a = zoo.create("resnet8", (1, 8, 8), 10)
    torch.manual_seed(7)
    b = zoo.create("resnet8", (1, 8, 8), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_resnet8_has_residual_adds_and_dscnn_depthwise():
    traced = torch.fx.symbolic_trace(zoo.create("resnet8", (1, 28, 28), 10))
    adds = [n for n in traced.graph.nodes if "add" in str(n.target)]
    assert len(adds) == 3
    depthwise = [m for m in zoo.create("dscnn", (1, 28, 28), 10).modules()
                 if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 4


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="resnet8") as info:
        zoo.create("vgg16", (1, 28, 28), 10)
    assert "vgg16" in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "shape"), [("lenet5", (6, 100)), ("tcn1d", (1, 28, 28)),
                                              ("resnet8", (28, 28)), ("lenet5", (1, 2, 2))])
def test_wrong_input_shape_names_model_and_expected_shape(name, shape):
    with pytest.raises(ModelError, match=name) as info:
        zoo.create(name, shape, 10)
    assert "(C, " in str(info.value) and str(shape) in str(info.value)


@pytest.mark.parametrize("bad", [(0, 28, 28), "1x28x28", (1.0, 28, 28)])
def test_bad_input_shape_values(bad):
    with pytest.raises((ValueError, TypeError), match="input_shape"):
        zoo.create("lenet300", bad, 10)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2; got 1"):
        zoo.create("lenet300", (4,), 1)


def test_pretrained_validates_before_training(tmp_path):
    with pytest.raises(ModelError, match="tcn1d"):
        zoo.pretrained("tcn1d", "digits", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        zoo.pretrained("lenet5", "digits", epochs=0, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_pretrained_caches_safetensors_and_reloads_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path))
    first = zoo.pretrained("lenet5", "digits", epochs=1, progress=False)
    assert not first.training
    folder = tmp_path / "zoo"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["lenet5_digits_seed0_ep1.json", "lenet5_digits_seed0_ep1.safetensors"]
    record = json.loads((folder / files[0]).read_text())
    assert record["epochs"] == 1 and 0.0 <= record["test_accuracy"] <= 1.0 and record["version"]

    start = time.perf_counter()
    second = zoo.pretrained("lenet5", "digits", epochs=1, progress=False)
    assert time.perf_counter() - start < 1.0
    assert not second.training
    for (k, v), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    info = zoo.pretrained_info("lenet5", "digits", epochs=1)
    assert info.test_accuracy == record["test_accuracy"] and info.epochs == 1


def test_pretrained_recovers_from_a_damaged_cache(tmp_path):
    zoo.pretrained("lenet300", "digits", epochs=1, cache_dir=tmp_path, progress=False)
    weights = tmp_path / "lenet300_digits_seed0_ep1.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        net = zoo.pretrained("lenet300", "digits", epochs=1, cache_dir=tmp_path, progress=False)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert weights.stat().st_size > 1000


def test_unwritable_cache_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="EDGEOPT_CACHE_DIR"):
        zoo.pretrained("lenet300", "digits", epochs=1, cache_dir=blocker / "zoo", progress=False)


@pytest.mark.parametrize(("name", "shape", "classes", "params"), [
    ("ds_cnn_kws", (1, 49, 10), 12, 22_028), ("resnet8", (3, 32, 32), 10, 77_370),
    ("mobilenetv1_vww", (3, 96, 96), 2, 208_114), ("fc_autoencoder", (640,), 2, 265_864)])
def test_mlperf_tiny_shapes(name, shape, classes, params):
    """The MLPerf Tiny reference models at their inputs: output shapes, and weight + bias counts
    of the reference layer lists (batch norms fold into them)."""
    net = zoo.create(name, shape, classes).eval()
    out = net(torch.randn(1, *shape))
    assert out.shape == (1, 640 if name == "fc_autoencoder" else classes)
    weights = sum(p.numel() for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)
                  for p in m.parameters())
    assert weights == params


def test_reconstruction_models_are_not_trained_as_classifiers(tmp_path):
    with pytest.raises(ModelError, match="fc_autoencoder.*reconstruction"):
        zoo.pretrained("fc_autoencoder", "digits", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
