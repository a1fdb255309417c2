"""Dynamic, weight-only (int8 and grouped int4) and QAT: simulated = deployed, real kernels."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import edgeopt as eo
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.quantization.modules import GroupedLinear, QuantizedWeightLayer
from edgeopt.runtime.inspect import census


def mlp(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 5)).eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 64, 5)).eval()


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _agree(model, path, x) -> float:
    return float((_run(path, x).argmax(1) == model(x).detach().numpy().argmax(1)).mean())


def test_dynamic_quantization_runs_integer_gemm(tmp_path):
    q, q_stats = eo.apply_with_stats(mlp(), eo.QuantConfig(method="dynamic"))
    x = torch.randn(200, 1, 8, 8)
    path = eo.export_onnx(q, tmp_path / "d.onnx", x[:1])
    assert _agree(q, path, x) >= 0.995
    counts = census(path)
    ops = counts["all_ops"]  # run-time quantization fused into the GEMM, bias included
    assert ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulIntegerToFloat", 0) == 2
    assert not counts["float_ops"] and "Add" not in ops


def test_dynamic_refuses_models_without_linear():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3)).eval()
    with pytest.raises(ModelError, match="Linear"):
        eo.apply(conv, eo.QuantConfig(method="dynamic"))


def test_weight_only_int8_needs_no_data_and_shrinks_file(tmp_path):
    model = mlp(256)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(method="weight_only", activations=None))
    assert all(isinstance(q.get_submodule(n), QuantizedWeightLayer) for n in ("1", "3"))
    x = torch.randn(100, 1, 8, 8)
    fp32 = eo.export_onnx(model, tmp_path / "f.onnx", x[:1])
    int8 = eo.export_onnx(q, tmp_path / "q.onnx", x[:1])
    assert int8.stat().st_size < fp32.stat().st_size / 3
    assert _agree(q, int8, x) >= 0.995


def test_int4_grouped_weight_only_packs_nibbles_and_fuses_matmulnbits(tmp_path):
    model = mlp(256)
    config = eo.QuantConfig(method="weight_only", activations=None,
                            weights=eo.QuantSpec(bits=4, granularity="per_group", group_size=32))
    q, q_stats = eo.apply_with_stats(model, config)
    assert isinstance(q.get_submodule("1"), GroupedLinear)
    assert int(q.get_submodule("1").weight_q.abs().max()) <= 7
    x = torch.randn(100, 1, 8, 8)
    fp32 = eo.export_onnx(model, tmp_path / "f.onnx", x[:1])
    int4 = eo.export_onnx(q, tmp_path / "q.onnx", x[:1])
    nodes = [n.op_type for n in onnx.load(str(int4)).graph.node]
    assert nodes.count("MatMulNBits") == 2 and "DequantizeLinear" not in nodes
    assert int4.stat().st_size < fp32.stat().st_size / 5
    assert census(int4)["all_ops"].get("MatMulNBits", 0) == 2
    assert _agree(q, int4, x) >= 0.97  # the kernel quantizes activations per block too
    sim, ref = q(x).detach(), model(x).detach()
    assert eo.quantization.primitives.sqnr_db(ref, sim) > 15


def test_group_size_must_divide_input_width():
    config = eo.QuantConfig(method="weight_only", activations=None,
                            weights=eo.QuantSpec(bits=4, granularity="per_group", group_size=48))
    with pytest.raises(ConfigError, match="group_size=48 does not divide the 64 input features"):
        eo.apply(mlp(), config)


def _digits_like(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].sum((1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def test_qat_trains_exports_and_matches_runtime(tmp_path):
    data = _digits_like()
    model = small_cnn()
    config = eo.QuantConfig(method="qat", epochs=2, lr=1e-3,
                            weights=eo.QuantSpec(bits=4), checkpoint_dir=str(tmp_path / "ck"))
    q, q_stats = eo.apply_with_stats(model, config, data=data)
    stats = q_stats["quant"]
    assert len(stats.curves["train_loss"]) == 2 and len(stats.curves["weight_quant_mse"]) == 2
    x = data.tensors[0][:200]
    path = eo.export_onnx(q, tmp_path / "q.onnx", x[:1])
    assert _agree(q, path, x) >= 0.995
    assert census(path)["all_ops"].get("QLinearConv", 0) == 1
    assert [f.name for f in (tmp_path / "ck").iterdir()] == ["001-qat.pt"]


def test_qat_resumes_from_the_last_finished_epoch(tmp_path, monkeypatch):
    from edgeopt import training

    data, fit = _digits_like(), training.fit
    config = eo.QuantConfig(method="qat", epochs=2, checkpoint_dir=str(tmp_path / "ck"))
    whole, whole_stats = eo.apply_with_stats(small_cnn(), config, data=data)
    epochs_run = []

    def fit_then_die(*args, **kwargs):
        if epochs_run:
            raise KeyboardInterrupt
        epochs_run.append(1)
        return fit(*args, **kwargs)

    config = eo.QuantConfig(method="qat", epochs=2, checkpoint_dir=str(tmp_path / "again"))
    monkeypatch.setattr(training, "fit", fit_then_die)
    with pytest.raises(KeyboardInterrupt):  # killed during the second epoch
        eo.apply(small_cnn(), config, data=data)

    def counted_fit(*args, **kwargs):
        epochs_run.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", counted_fit)
    resumed, resumed_stats = eo.apply_with_stats(small_cnn(), config, data=data)
    assert len(epochs_run) == 2  # the resumed run trained the second epoch only
    assert resumed_stats["quant"].curves == whole_stats["quant"].curves
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_qat_keeps_pruned_weights_at_zero():
    model = small_cnn()
    with torch.no_grad():
        model[4].weight[:, ::2] = 0.0
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(method="qat", epochs=1, lr=1e-2), data=_digits_like())
    weight_q = q.get_submodule("4").weight_q
    assert (weight_q[:, ::2] == 0).all()


def test_qat_scales_learn_in_the_log_domain_so_an_adam_step_is_relative():
    """Adam moves a parameter by about lr a step whatever its size: a raw scale of ~1e-5 would be
    doubled or erased in a few steps; its logarithm moves by about lr, the scale by exp(lr)."""
    from edgeopt.quantization.modules import ActQuant, QATWeightLayer
    from edgeopt.quantization.observers import make_observer

    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    with torch.no_grad():
        linear.weight.mul_(1e-3)  # per-channel scales ~1e-5
    layer = QATWeightLayer(linear, eo.QuantSpec(bits=8))
    start = layer.scale.detach().clone()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        layer(torch.randn(4, 16)).pow(2).sum().backward()
        optimizer.step()
    change = (layer.scale.detach() / start).log().abs()
    assert (change > 0).any() and (change <= 20 * 1e-3 * 1.1).all()
    # an activation quantizer's learned scale comes back unchanged when nothing trained it
    act = ActQuant(eo.QuantSpec(bits=8), make_observer("minmax"))
    act(torch.randn(64) * 1e-4)
    act.freeze()
    frozen = act.scale.clone()
    act.start_learning()
    act.stop_learning()
    assert torch.allclose(act.scale, frozen, rtol=1e-6)


def test_qat_without_data_is_refused():
    with pytest.raises(DataError, match="needs training data"):
        eo.apply(small_cnn(), eo.QuantConfig(method="qat"))


def test_simulated_int8_matches_runtime_numerically(tmp_path):
    # stricter than top-1: outputs within a couple of quantization steps on every sample
    model = small_cnn()
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(), data=[torch.randn(64, 1, 8, 8)])
    x = torch.randn(100, 1, 8, 8)
    path = eo.export_onnx(q, tmp_path / "q.onnx", x[:1])
    diff = np.abs(_run(path, x) - q(x).detach().numpy())
    assert diff.max() < 0.05 * np.abs(q(x).detach().numpy()).max()


def test_layer_sensitivity_ranks_the_damaged_layer_first():
    from edgeopt.quantization.analysis import layer_sensitivity

    model = mlp()
    data = _digits_like(256)
    data.tensors[0][:, 0, 0, 0] = 0.0  # a dead input pixel...
    with torch.no_grad():  # ...whose huge weights wreck layer "1"'s per-tensor 4-bit scale
        model[1].weight[:, 0] = 40.0
    config = eo.QuantConfig(weights=eo.QuantSpec(bits=4, granularity="per_tensor"))
    rows = layer_sensitivity(model, config, data, progress=False)
    assert [r.name for r in rows] == ["1", "3"]
    assert rows[0].sqnr_db < rows[1].sqnr_db
    assert rows[0].accuracy_drop is not None and 0.0 <= rows[0].agreement <= 1.0


def test_weight_overrides_by_type_and_name():
    config = eo.QuantConfig(method="weight_only", activations=None,
                            weight_overrides={"Linear": eo.QuantSpec(bits=4), "3": eo.QuantSpec()})
    q, q_stats = eo.apply_with_stats(mlp(), config)
    assert q.get_submodule("1").spec.bits == 4
    assert q.get_submodule("3").spec.bits == 4  # first match wins: "Linear" comes first
    again = eo.QuantConfig.from_dict(config.to_dict())
    assert again.weight_overrides["Linear"].bits == 4


def test_sensitivity_is_recorded_in_the_stats():
    q, q_stats = eo.apply_with_stats(mlp(), eo.QuantConfig(sensitivity=True), data=_digits_like(128))
    rows = q_stats["quant"].sensitivity
    assert {r["name"] for r in rows} == {"1", "3"} and all("sqnr_db" in r for r in rows)
