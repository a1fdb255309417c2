"""Distillation end to end on a tiny synthetic task: modes, features, stats, export, errors."""


import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import edgeopt as eo
from edgeopt.errors import ConfigError, ConfigTypeError, DataError, ModelError
from edgeopt.training import evaluate, fit


def _data(n: int = 384, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    w = torch.randn(64, 4, generator=g)
    return TensorDataset(x, (x.flatten(1) @ w).argmax(1))


def _cnn(width: int, classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, classes))


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = _cnn(16)
    fit(model, _data(), epochs=4, lr=3e-3, progress=False)
    return model


def _student() -> nn.Module:
    torch.manual_seed(1)
    return _cnn(4)


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_offline_distillation_trains_a_copy_and_records_curves(teacher, tmp_path):
    student = _student()
    before, teacher_before = _state(student), _state(teacher)
    config = eo.DistillConfig(temperature=4.0, alpha=0.7, epochs=3, lr=3e-3)
    out, out_stats = eo.apply_with_stats(student, config, data=_data(), teacher=teacher)
    assert out is not student
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    stats = out_stats["distill"]
    curves = stats.curves
    assert len(curves.train_loss) == len(curves.val_accuracy) == 3
    assert curves.soft_loss[-1] < curves.soft_loss[0]
    assert stats.teacher_params > 4 * stats.student_params
    assert stats.val_samples == round(384 * 0.1) and stats.train_samples == 384 - stats.val_samples
    assert evaluate(out, _data(256, seed=5)) > evaluate(student, _data(256, seed=5))
    record = stats.to_dict()
    assert record["curves"]["best_epoch"] in (0, 1, 2)
    # exports and runs in ONNX Runtime
    x = torch.randn(5, 1, 8, 8)
    path = eo.export_onnx(out, tmp_path / "s.onnx", x[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, out(x).detach().numpy(), atol=1e-4)


def test_same_seed_same_weights(teacher):
    config = eo.DistillConfig(epochs=1, val_fraction=0.0)
    a, a_stats = eo.apply_with_stats(_student(), config, data=_data(), teacher=teacher)
    b = eo.apply(_student(), config, data=_data(), teacher=teacher)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a_stats["distill"].curves.val_accuracy == []


def test_mse_logits_and_batches_list(teacher):
    data = _data()
    batches = [(data.tensors[0][i:i + 64], data.tensors[1][i:i + 64]) for i in range(0, 384, 64)]
    out, out_stats = eo.apply_with_stats(
        _student(), eo.DistillConfig(logit_loss="mse", epochs=1, val_fraction=0.2), data=batches,
        teacher=teacher)
    stats = out_stats["distill"]
    assert stats.logit_loss == "mse" and stats.val_samples == 64 and stats.train_samples == 320


def test_feature_hints_with_projection_leave_no_hooks(teacher):
    config = eo.DistillConfig(epochs=1, features=("2", "0:0"), feature_weight=0.5)
    out, out_stats = eo.apply_with_stats(_student(), config, data=_data(), teacher=teacher)
    features = out_stats["distill"].features
    assert features[0]["student_shape"] == [4, 8, 8]
    assert features[0]["teacher_shape"] == [16, 8, 8]
    assert features[0]["projection"] == "Conv2d" and features[0]["projection_params"] == 64
    assert out_stats["distill"].curves.feature_loss[0] > 0
    assert all(not m._forward_hooks for m in out.modules())
    assert all(not m._forward_hooks for m in teacher.modules())


def test_online_mutual_learning_trains_both(teacher):
    out, out_stats = eo.apply_with_stats(
        _student(), eo.DistillConfig(mode="online", epochs=2), data=_data(), teacher=teacher)
    curves = out_stats["distill"].curves
    assert len(curves.teacher_val_accuracy) == 2


def test_self_distillation_needs_no_teacher():
    base = _student()
    fit(base, _data(), epochs=1, progress=False)
    out, out_stats = eo.apply_with_stats(
        base, eo.DistillConfig(mode="self", epochs=2), data=_data())
    stats = out_stats["distill"]
    assert stats.mode == "self" and stats.teacher_params == stats.student_params


def test_statistics_are_returned_not_attached(teacher):
    out, stats = eo.apply_with_stats(_student(), eo.DistillConfig(epochs=1), data=_data(),
                                     teacher=teacher)
    assert list(stats) == ["distill"] and not hasattr(out, "meta")


def test_config_round_trip_and_teacher_flag():
    config = eo.DistillConfig(temperature=2, alpha=0.5, features=["a", "b:c"], mode="online")
    assert config.features == (("a", "a"), ("b", "c"))
    assert type(config).from_dict(config.to_dict()) == config
    assert type(config).needs_teacher is True and config.kind == "distill"


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0}, r"DistillConfig.temperature must be a float > 0; got 0.0."),
    ({"temperature": -1}, r"DistillConfig.temperature must be a float > 0; got -1.0."),
    ({"alpha": 1.5}, r"DistillConfig.alpha must be a float in \[0, 1\]; got 1.5."),
    ({"alpha": -0.1}, r"DistillConfig.alpha must be a float in \[0, 1\]"),
    ({"mode": "teacherless"}, r"DistillConfig.mode must be one of 'offline'"),
    ({"features": ("a:b:c",)}, r"'layer' or 'student_layer:teacher_layer'"),
    ({"epochs": 0}, r"DistillConfig.epochs must be an int >= 1"),
    ({"val_fraction": 1.0}, r"DistillConfig.val_fraction must be a float in \[0, 1\)"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        eo.DistillConfig(**kwargs)


def test_teacher_with_other_output_shape_is_refused_before_training(teacher):
    other = _cnn(8, classes=7)
    with pytest.raises(ModelError, match=r"teacher's output shape \(2, 7\) differs from the "
                                         r"student's \(2, 4\)"):
        eo.apply(_student(), eo.DistillConfig(epochs=50), data=_data(), teacher=other)


def test_unknown_feature_layer_lists_close_matches(teacher):
    student = nn.Sequential()
    student.add_module("features", _cnn(4))
    with pytest.raises(ConfigError, match=r"'feature.2'.*close matches: features.2"):
        eo.apply(student, eo.DistillConfig(features=("feature.2:2",)), data=_data(),
                 teacher=teacher)
    with pytest.raises(ConfigError, match="which the teacher does not have"):
        eo.apply(_student(), eo.DistillConfig(features=("2:conv9",)), data=_data(),
                 teacher=teacher)


def test_missing_teacher_or_data(teacher):
    with pytest.raises(ConfigError, match=r"mode='offline'\) needs a teacher"):
        eo.apply(_student(), eo.DistillConfig(), data=_data())
    with pytest.raises(DataError, match="needs training data"):
        eo.apply(_student(), eo.DistillConfig(), teacher=teacher)
    with pytest.raises(ConfigTypeError, match="teacher must be a torch.nn.Module"):
        eo.apply(_student(), eo.DistillConfig(), data=_data(), teacher="resnet8")


def test_self_distillation_with_deeper_exits():
    base = _student()
    out, out_stats = eo.apply_with_stats(
        base, eo.DistillConfig(mode="self", exits=("1",), epochs=2), data=_data())
    stats = out_stats["distill"]
    assert stats.exits == ["1"] and len(stats.curves.exit_loss) == 2
    assert stats.curves.exit_loss[0] > 0
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in base.parameters())
    assert all(not m._forward_hooks for m in out.modules())
    with pytest.raises(ConfigError, match="DistillConfig.exits are used by mode='self' only"):
        eo.DistillConfig(exits=("1",))
    with pytest.raises(ConfigError, match=r"DistillConfig.exits names layer '10'.*close "
                                          r"matches: 1, 0"):
        eo.apply(base, eo.DistillConfig(mode="self", exits=("10",)), data=_data())


def test_recipe_stages_map_onto_the_three_configs():
    from edgeopt.recipes.schema import load_recipe

    recipe = load_recipe({"model": "lenet300", "data": "digits", "stages": [
        {"name": "kd", "technique": "distill", "config": {"temperature": 2, "features": ["fc1"]}},
        {"name": "lr", "technique": "lowrank", "config": {"method": "tucker", "energy": 0.8}},
        {"name": "cl", "technique": "cluster", "config": {"clusters": 8, "init": "kmeans++"}},
    ]})
    kd, lowrank, cluster = (s.config for s in recipe.stages)
    assert kd == eo.DistillConfig(temperature=2.0, features=("fc1",))
    assert lowrank == eo.LowRankConfig(method="tucker", energy=0.8)
    assert cluster == eo.ClusterConfig(clusters=8, init="kmeans++")
    with pytest.raises(ConfigError, match=r"recipe.stages\[0\].config.temp is not a known field"):
        load_recipe({"stages": [{"technique": "distill", "config": {"temp": 2}}]})
