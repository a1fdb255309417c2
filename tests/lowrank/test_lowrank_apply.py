"""Low-rank factorization of layers and models: exactness at full rank, savings, stats, errors."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import edgeopt as eo
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.lowrank.layers import CP, SVD, TUCKER, Factorized, count_macs


class Net(nn.Module):
    """Conv stem, a wide 3x3 conv, a strided conv, a depthwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.dw(self.body(self.stem(x))), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def _data(n: int = 128) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,),
                                                                             generator=g))


LAYERS = {
    "conv2d_strided": (nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
    "conv2d_rect": (nn.Conv2d(6, 8, (3, 5), padding=(1, 2), dilation=(1, 2)), (2, 6, 9, 11)),
    "conv1d_dilated": (nn.Conv1d(6, 8, 3, padding=2, dilation=2), (2, 6, 15)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("decomposer,rank", [(SVD, 8), (TUCKER, (8, 6))])
def test_full_rank_factorization_is_exact(name, decomposer, rank):
    torch.manual_seed(0)
    layer, shape = LAYERS[name]
    x = torch.randn(shape)
    module, approx = decomposer.build(layer, rank)
    assert isinstance(module, Factorized)
    torch.testing.assert_close(approx, layer.weight.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(module(x), layer(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(LAYERS))
def test_cp_layers_compute_the_cp_approximation(name):
    """The 1x1 -> depthwise-per-dim -> 1x1 chain equals a conv with the reconstructed kernel."""
    torch.manual_seed(0)
    layer, shape = LAYERS[name]
    x = torch.randn(shape)
    module, approx = CP.build(layer, 10)
    reference = layer._conv_forward(x, approx, layer.bias)
    torch.testing.assert_close(module(x), reference, atol=1e-4, rtol=1e-4)
    assert len(module) == 2 + layer.weight.dim() - 2


def test_linear_svd_full_rank_and_macs():
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    x = torch.randn(3, 20)
    module, _ = SVD.build(layer, 12)
    torch.testing.assert_close(module(x), layer(x), atol=1e-5, rtol=1e-5)
    low, _ = SVD.build(layer, 4)
    assert count_macs(layer, (20,)) == 240 and count_macs(low, (20,)) == 4 * 20 + 12 * 4


@pytest.mark.parametrize("method", ["svd", "tucker", "cp"])
def test_apply_replaces_only_layers_that_save(method, tmp_path):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, out_stats = eo.apply_with_stats(model, eo.LowRankConfig(method=method, energy=0.5))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    stats = out_stats["lowrank"]
    assert stats.skipped == {"dw": "Conv2d with groups=32 / padding_mode=zeros not supported"}
    for plan in stats.layers:
        if plan.replaced:
            assert plan.params_after < plan.params_before and plan.macs_after < plan.macs_before
            assert isinstance(out.get_submodule(plan.name), Factorized)
        else:
            assert type(out.get_submodule(plan.name)) is type(model.get_submodule(plan.name))
    assert stats.replaced and stats.params_after < stats.params_before
    assert stats.macs_input.startswith("synthetic")
    record = stats.to_dict()
    assert record["replaced"] == stats.replaced
    x = torch.randn(4, 1, 8, 8)
    path = eo.export_onnx(out, tmp_path / f"{method}.onnx", x[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, out(x).detach().numpy(), atol=1e-4)


def test_high_energy_keeps_outputs_close():
    model = _net()
    out, out_stats = eo.apply_with_stats(
        model, eo.LowRankConfig(energy=0.999, layers=("fc",)), data=_data())
    x = torch.randn(8, 1, 8, 8)
    stats = out_stats["lowrank"]
    assert stats.macs_input == "data sample"
    plan = stats.layers[0]
    assert plan.name == "fc" and plan.energy_kept >= 0.999
    rel = (out(x) - model(x)).norm() / model(x).norm()
    assert rel < 0.05 or not plan.replaced


def test_budget_and_fixed_rank():
    out, out_stats = eo.apply_with_stats(
        _net(), eo.LowRankConfig(param_budget=0.3, exclude=("stem",)))
    stats = out_stats["lowrank"]
    assert stats.selection == "budget"
    for plan in stats.layers:
        assert plan.params_after <= 0.3 * plan.params_before + 12  # bias stays whole
    fixed, fixed_stats = eo.apply_with_stats(
        _net(), eo.LowRankConfig(method="tucker", rank=4, exclude=("stem",)))
    plans = fixed_stats["lowrank"].layers
    assert all(p.rank == [4, 4] for p in plans if p.type == "Conv2d")


def test_sensitivity_records_accuracy_drop_and_finetunes():
    config = eo.LowRankConfig(selection="sensitivity", max_accuracy_drop=0.05,
                              sensitivity_samples=64, finetune_epochs=1, exclude=("stem",))
    out, out_stats = eo.apply_with_stats(_net(), config, data=_data())
    stats = out_stats["lowrank"]
    assert len(stats.finetune_loss) == 1
    for plan in stats.layers:
        if plan.replaced:
            assert plan.accuracy_drop <= 0.05


def test_rank_too_large_is_refused_before_work():
    with pytest.raises(ConfigError, match=r"rank=20 is larger than these layers allow for "
                                          r"method='svd': stem \(max 9\), fc \(max 10\); "
                                          r"choose rank <= 9, exclude those layers"):
        eo.apply(_net(), eo.LowRankConfig(rank=20))


@pytest.mark.parametrize("kwargs,match", [
    ({"energy": 0.0}, r"LowRankConfig.energy must be a float in \(0, 1\]; got 0.0."),
    ({"energy": 1.5}, r"LowRankConfig.energy must be a float in \(0, 1\]; got 1.5."),
    ({"rank": 0}, r"LowRankConfig.rank must be an int >= 1 or None; got 0."),
    ({"rank": 4, "param_budget": 0.5}, r"set only one"),
    ({"selection": "rank"}, r"needs LowRankConfig.rank"),
    ({"method": "qr"}, r"LowRankConfig.method must be one of 'svd', 'tucker', 'cp'"),
    ({"param_budget": 1.0}, r"LowRankConfig.param_budget must be a float in \(0, 1\)"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        eo.LowRankConfig(**kwargs)


def test_errors_on_data_and_layers():
    with pytest.raises(DataError, match="selection='sensitivity' needs labeled data"):
        eo.apply(_net(), eo.LowRankConfig(selection="sensitivity"))
    with pytest.raises(ModelError, match="no layer to factorize"):
        eo.apply(_net(), eo.LowRankConfig(layers=("nothing*",)))


def test_config_round_trip():
    config = eo.LowRankConfig(method="cp", param_budget=0.4, exclude=("stem",))
    assert type(config).from_dict(config.to_dict()) == config
    assert config.kind == "lowrank" and config.rank_selection.value == "budget"
