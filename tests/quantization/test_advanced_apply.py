"""The advanced options end to end: one config, simulated == deployed, stats recorded."""

import pytest
import torch
import torch.nn as nn
from qhelpers import agreement, ds_cnn, images, run_onnx

import edgeopt as eo
from edgeopt.errors import ConfigError
from edgeopt.quantization import AdvancedQuantConfig, MixedPrecision
from edgeopt.quantization.apply import check_supported
from edgeopt.quantization.modules import QuantizedWeightLayer
from edgeopt.quantization.primitives import sqnr_db
from edgeopt.runtime.inspect import census


def test_advanced_fields_round_trip_through_dict():
    config = eo.QuantConfig(
        weights=eo.QuantSpec(bits=4, levels="log2"), equalization=True, bias_correction=True,
        rounding="adaround", smoothquant=True,
        mixed_precision=MixedPrecision(size_budget_bytes=1000, candidates=(4, 8, 32)),
        advanced=AdvancedQuantConfig(adaround_iterations=10, input_shape=(1, 8, 8),
                                     bias_correction="analytical"))
    again = eo.QuantConfig.from_dict(config.to_dict())
    assert again == config and again.advanced.input_shape == (1, 8, 8)


def test_w4a8_cle_bias_correction_adaround_deploys_on_integer_kernels(tmp_path):
    model, calib, x = ds_cnn(), images(128, seed=1), images(400, seed=2)
    w4 = eo.QuantSpec(bits=4)
    plain = eo.apply(model, eo.QuantConfig(weights=w4), data=[calib])
    config = eo.QuantConfig(weights=w4, equalization=True, bias_correction=True,
                            rounding="adaround",
                            advanced=AdvancedQuantConfig(adaround_iterations=150,
                                                         relu6_to_relu=True))
    q, q_stats = eo.apply_with_stats(model, config, data=[calib])
    with torch.no_grad():
        reference = model(x)
        assert sqnr_db(reference, q(x)) > sqnr_db(reference, plain(x)) + 3
    path = eo.export_onnx(q, tmp_path / "w4.onnx", x[:1])
    assert agreement(run_onnx(path, x), q(x)) >= 0.995
    assert census(path)["all_ops"].get("QLinearConv", 0) == 3
    assert all(isinstance(q.get_submodule(n), QuantizedWeightLayer) for n in ("0", "3", "6"))
    stats = q_stats["quant"]
    rows = {r["name"]: r for r in stats.layers}
    assert "equalization_scale_max" in rows["3"] and stats.methods["equalization"]["pairs"]
    assert all(r["adaround_loss"] <= r["adaround_loss_nearest"] for r in rows.values())
    assert stats.methods["refinement"]["rounding_refined"] == 4


def test_gptq_int4_weight_only_beats_rtn_and_packs_matmulnbits(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10)).eval()
    mixing = torch.randn(64, 64)
    calib, x = torch.randn(256, 64) @ mixing / 8, torch.randn(256, 64) @ mixing / 8
    group = eo.QuantSpec(bits=4, granularity="per_group", group_size=32)
    rtn = eo.apply(model, eo.QuantConfig(method="weight_only", activations=None,
                                         weights=group), data=[calib])
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(method="weight_only", activations=None, weights=group,
                                       rounding="gptq"), data=[calib])
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) > sqnr_db(model(x), rtn(x)) + 1
    path = eo.export_onnx(q, tmp_path / "g.onnx", x[:1])
    assert census(path)["all_ops"].get("MatMulNBits", 0) == 2
    assert agreement(run_onnx(path, x), q(x)) >= 0.97
    rows = q_stats["quant"].layers
    assert all(r["gptq_loss"] <= r["gptq_loss_nearest"] for r in rows)


def test_stochastic_rounding_rounds_each_weight_down_or_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).eval()
    spec = eo.QuantSpec(bits=4)
    config = eo.QuantConfig(method="weight_only", activations=None, weights=spec)
    nearest = eo.apply(model, config).get_submodule("0")
    stochastic = eo.apply(model, eo.QuantConfig(method="weight_only", activations=None,
                                                weights=spec, rounding="stochastic"))
    q = stochastic.get_submodule("0")
    exact = model[0].weight / nearest.weight_scale.reshape(-1, 1)
    assert bool(((q.weight_q.float() - exact).abs() < 1 + 1e-5).all())
    assert not torch.equal(q.weight_q, nearest.weight_q)


@pytest.mark.parametrize("kwargs,field", [
    ({"method": "qat", "rounding": "adaround"}, "rounding"),
    ({"method": "qat", "rounding": "gptq"}, "rounding"),
    ({"activations": eo.QuantSpec(dtype="fp8_e4m3", granularity="per_tensor")},
     "activations.dtype"),
    ({"weights": eo.QuantSpec(bits=4, levels="kmeans"), "rounding": "adaround"},
     "weights.levels"),
    ({"method": "dynamic", "mixed_precision": MixedPrecision(accuracy_budget=1.0)},
     "mixed_precision"),
    ({"method": "weight_only", "activations": None, "smoothquant": True}, "smoothquant"),
    ({"method": "qat", "data_free": True}, "data_free"),
    ({"smoothquant": True, "awq": True}, "awq"),
    ({"method": "dynamic", "weights": eo.QuantSpec(dtype="bf16")}, "weights.dtype"),
])
def test_unsupported_combinations_are_refused_before_work(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        check_supported(eo.QuantConfig(**kwargs))


@pytest.mark.parametrize("kwargs,field", [
    ({"adaround_iterations": 0}, "adaround_iterations"),
    ({"smoothquant_alpha": 1.5}, "smoothquant_alpha"),
    ({"gptq_damping": -0.1}, "gptq_damping"),
    ({"time_budget_s": 0.0}, "time_budget_s"),
    ({"input_shape": (0, 8)}, "input_shape"),
])
def test_bad_advanced_knobs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"AdvancedQuantConfig.{field} must be"):
        AdvancedQuantConfig(**kwargs)
