import pytest
import torch
from pruning_models import ResidualNet, data, make, mlp

from edgeopt.errors import ConfigError
from edgeopt.pruning.sensitivity import SensitivityCurves, plan_from_curves, sensitivity_analysis


def _curves():
    return SensitivityCurves(
        structure="unstructured", baseline=0.9, levels=(0.25, 0.5, 0.75, 0.9),
        curves={"robust": [0.9, 0.9, 0.9, 0.89], "fragile": [0.9, 0.7, 0.4, 0.2]},
        sizes={"robust": 300, "fragile": 100})


def test_plan_meets_the_target_and_favours_robust_layers():
    plan = plan_from_curves(_curves(), 0.6)
    mean = (plan["robust"] * 300 + plan["fragile"] * 100) / 400
    assert mean == pytest.approx(0.6, abs=1e-6)
    assert plan["robust"] > plan["fragile"]
    assert plan_from_curves(_curves(), 0.0) == {"robust": 0.0, "fragile": 0.0}


def test_plan_respects_the_cap():
    plan = plan_from_curves(_curves(), 0.9)
    assert max(plan.values()) <= 0.95 + 1e-9
    with pytest.raises(ConfigError, match="plan.target"):
        plan_from_curves(_curves(), 1.0)


def test_analysis_builds_curves_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    curves = sensitivity_analysis(model, data(64), levels=(0.5, 0.9), batches=2)
    assert set(curves.curves) == {"1.weight", "3.weight", "5.weight"}
    assert all(len(v) == 2 for v in curves.curves.values())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    channel = sensitivity_analysis(make(ResidualNet), data(64), structure="channel",
                                   levels=(0.5,), batches=1)
    assert "conv1" in channel.curves and channel.sizes["conv1"] == 8
