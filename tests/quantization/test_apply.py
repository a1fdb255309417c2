"""Static PTQ end to end: the fake-quant model and its ONNX twin compute the same thing."""

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import edgeopt as eo
from edgeopt.errors import DataError, ModelError
from edgeopt.quantization.modules import ActQuant, QuantizedWeightLayer
from edgeopt.runtime.inspect import census


class TinyResNet(nn.Module):
    """Conv-BN-ReLU, max-pool, a residual add with a 1x1 projection, global pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.proj = nn.Conv2d(8, 16, 1)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.relu(self.conv(x) + self.proj(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


def _init(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("make", [TinyResNet, mlp])
def test_simulated_equals_deployed(make, tmp_path):
    model = _init(make())
    torch.manual_seed(1)
    calib = [torch.randn(16, 1, 8, 8) for _ in range(4)]
    qmodel, qmodel_stats = eo.apply_with_stats(model, eo.QuantConfig(), data=calib)
    x = torch.randn(256, 1, 8, 8)
    path = eo.export_onnx(qmodel, tmp_path / "q.onnx", x[:1])
    deployed = _ort(path, x)
    simulated = qmodel(x).detach().numpy()
    agreement = (deployed.argmax(1) == simulated.argmax(1)).mean()
    assert agreement >= 0.995
    step = float(max(m.scale for m in qmodel.modules() if isinstance(m, ActQuant)))
    assert np.abs(deployed - simulated).max() < 2 * step
    # and the quantized model stays close to float
    ref = model(x).detach().numpy()
    assert (ref.argmax(1) == simulated.argmax(1)).mean() > 0.9


def test_runtime_runs_integer_kernels(tmp_path):
    qmodel, qmodel_stats = eo.apply_with_stats(_init(TinyResNet()), eo.QuantConfig(), data=[torch.randn(8, 1, 8, 8)])
    counts = census(eo.export_onnx(qmodel, tmp_path / "q.onnx", torch.randn(1, 1, 8, 8)))["all_ops"]
    assert counts.get("QLinearConv", 0) == 3
    assert counts.get("QLinearAdd", 0) == 1
    assert counts.get("Conv", 0) + counts.get("FusedConv", 0) == 0


def test_weights_are_stored_as_int8_and_model_is_not_mutated():
    model = _init(TinyResNet())
    before = copy.deepcopy(model.state_dict())
    qmodel, qmodel_stats = eo.apply_with_stats(model, eo.QuantConfig(), data=[torch.randn(8, 1, 8, 8)])
    layers = [m for m in qmodel.modules() if isinstance(m, QuantizedWeightLayer)]
    assert len(layers) == 4
    assert all(layer.weight_q.dtype == torch.int8 for layer in layers)
    assert all(layer.bias_q is None or layer.bias_q.dtype == torch.int32 for layer in layers)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_exclude_keeps_layers_in_float():
    qmodel, qmodel_stats = eo.apply_with_stats(_init(mlp()), eo.QuantConfig(exclude=("3",)), data=[torch.randn(8, 1, 8, 8)])
    assert isinstance(qmodel.get_submodule("1"), QuantizedWeightLayer)
    assert isinstance(qmodel.get_submodule("3"), nn.Linear)
    assert qmodel_stats["quant"].float_layers == ["3"]


def test_bad_calibration_data_is_refused():
    model = _init(mlp())
    with pytest.raises(DataError, match="needs calibration data"):
        eo.apply(model, eo.QuantConfig())
    with pytest.raises(DataError, match="empty"):
        eo.apply(model, eo.QuantConfig(), data=[])
    with pytest.raises(DataError, match="NaN"):
        eo.apply(model, eo.QuantConfig(), data=[torch.full((2, 1, 8, 8), float("nan"))])
    with pytest.raises(DataError, match="does not fit the model"):
        eo.apply(model, eo.QuantConfig(), data=[torch.randn(2, 3, 5, 5)])


def test_nan_weights_are_refused():
    model = _init(mlp())
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match="NaN or inf"):
        eo.apply(model, eo.QuantConfig(), data=[torch.randn(2, 1, 8, 8)])


def test_static_stages_record_activation_error_and_saturation_per_layer():
    """The report's activation sections come from real quantize stages, not samples."""
    torch.manual_seed(0)
    model, calib = TinyResNet().eval(), torch.randn(64, 1, 8, 8)
    rows = {}
    for calibration in ("minmax", "percentile"):
        _, stats = eo.apply_with_stats(model, eo.QuantConfig(calibration=calibration,
                                                             percentile=90.0), data=[calib])
        rows[calibration] = {r["name"]: r for r in stats["quant"].layers}
    stem = rows["minmax"]["stem.0"]
    assert sum(stem["act_error_hist"]["counts"]) == 8 * 1 * 8 * 8  # 8 samples of the input
    assert len(stem["channel_saturation"]) == 1
    # min-max covers every calibration value; a 90th-percentile range clips some
    assert all(r["saturation"] == 0.0 for r in rows["minmax"].values() if "saturation" in r)
    assert max(r["saturation"] for r in rows["percentile"].values() if "saturation" in r) > 0.01
    assert rows["percentile"]["fc"]["clip_ratio"] > 0
