"""measure / census / compare_latency on tiny exported models."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeopt.errors import ConfigError
from edgeopt.export.onnx import export_onnx
from edgeopt.runtime import census, compare_latency, measure, size_on_disk


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("measure")
    model = _net()
    torch.manual_seed(1)
    x, y = torch.randn(70, 1, 8, 8), torch.randint(0, 5, (70,))
    path = export_onnx(model, folder / "net.onnx", x[:1])
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    return path, TensorDataset(x, y), expected


def test_measure_accuracy_size_latency(setup):
    path, data, expected = setup
    m = measure(path, data, runs=20, warmup=3)
    assert m.accuracy == pytest.approx(expected)
    assert m.num_samples == 70
    assert m.size_bytes == path.stat().st_size
    assert 0 < m.latency_min_ms <= m.latency_ms <= m.latency_p90_ms
    assert m.threads == 1 and m.ort_version and m.cpu
    d = m.to_dict()
    assert {"accuracy", "size_bytes", "latency_ms", "int8_ops", "float_ops", "runs_int8"} <= set(d)
    assert d["runs_int8"] is False


def test_measure_accepts_a_dataloader_and_unlabeled_batches(setup):
    path, data, expected = setup
    loaded = measure(path, DataLoader(data, batch_size=16), runs=3, warmup=0, batch_size=4)
    assert loaded.accuracy == pytest.approx(expected) and loaded.batch_size == 4
    unlabeled = measure(path, [data.tensors[0][:10], data.tensors[0][10:13]], runs=3)
    assert unlabeled.accuracy is None and unlabeled.num_samples == 13


def test_size_counts_external_data(setup, tmp_path):
    path, data, expected = setup
    model = onnx.load(path)
    external = tmp_path / "ext.onnx"
    onnx.save(
        model,
        external,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=256,
    )  # ORT needs small shape tensors inline
    data_file = tmp_path / "ext.onnx.data"
    assert data_file.stat().st_size > 0
    total = external.stat().st_size + data_file.stat().st_size
    assert size_on_disk(external) == total
    m = measure(external, data, runs=3, warmup=1)
    assert m.size_bytes == total and m.accuracy == pytest.approx(expected)


def test_census_of_fp32_and_int8_models(setup, tmp_path):
    path, _, _ = setup
    fp32 = census(path)
    assert sum(n for op, n in fp32["float_ops"].items() if "Conv" in op) == 1
    assert fp32["int8_ops"] == {} and fp32["runs_int8"] is False
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    fp32_mlp = export_onnx(mlp, tmp_path / "mlp.onnx", torch.randn(1, 16))
    quantize_dynamic(str(fp32_mlp), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    int8 = census(tmp_path / "int8.onnx")
    assert sum(int8["int8_ops"].values()) == 2 and int8["runs_int8"] is True


def test_compare_latency_gives_one_median_per_path(setup):
    path, data, _ = setup
    medians = compare_latency([path, path, path], data, threads=1, rounds=4, runs_per_round=2)
    assert len(medians) == 3 and all(t > 0 for t in medians)


def test_static_batch_model_is_evaluated_in_its_own_batch(setup, tmp_path):
    _, data, expected = setup
    path = export_onnx(_net(), tmp_path / "static.onnx", data.tensors[0][:1], dynamic_batch=False)
    assert measure(path, data, runs=2, warmup=0).accuracy == pytest.approx(expected)
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        measure(path, data, batch_size=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threads": 0}, "threads"),
        ({"runs": 0}, "runs"),
        ({"warmup": -1}, "warmup"),
        ({"optimization": "max"}, "optimization"),
        ({"batch_size": 1.5}, "batch_size"),
    ],
)
def test_invalid_arguments(setup, kwargs, match):
    path, data, _ = setup
    with pytest.raises(ValueError, match=match):
        measure(path, data, **kwargs)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        measure(tmp_path / "nope.onnx", [torch.zeros(1, 1, 8, 8)])
    with pytest.raises(ConfigError, match="non-empty list"):
        compare_latency([], [torch.zeros(1, 1, 8, 8)])
