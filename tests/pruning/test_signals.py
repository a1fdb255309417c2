import torch
import torch.nn.functional as F
from pruning_models import batches, mlp

from edgeopt.pruning.signals import collect_gradients, collect_input_norms


def test_gradients_match_manual_autograd():
    model = mlp()
    params = {"1.weight": model[1].weight, "5.bias": model[5].bias}
    signals = collect_gradients(model, batches(), params, batches=2, batch_size=32)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    total, total_abs = torch.zeros_like(model[1].weight), torch.zeros_like(model[1].weight)
    for x, y in batches()[:2]:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        total += model[1].weight.grad
        total_abs += model[1].weight.grad.abs()
    assert signals["1.weight"].batches == 2
    assert torch.allclose(signals["1.weight"].grad_sum, total, atol=1e-6)
    assert torch.allclose(signals["1.weight"].grad_abs_sum, total_abs, atol=1e-6)


def test_input_norms_per_channel():
    model = mlp()
    x = torch.randn(6, 1, 8, 8)
    norms = collect_input_norms(model, [x], {"1": model[1]}, batches=1, batch_size=6)
    assert torch.allclose(norms["1"], x.reshape(6, 64).double().norm(dim=0))


def test_batch_norm_recalibration_matches_the_data_statistics():
    from pruning_models import ResidualNet, make

    from edgeopt.pruning.signals import recalibrate_batch_norm

    model = make(ResidualNet)
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    momentum = model.stem[1].momentum
    assert recalibrate_batch_norm(model, [x], batches=1, batch_size=64) == 4
    with torch.no_grad():
        pre = model.stem[0](x)
    assert torch.allclose(model.stem[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert model.stem[1].momentum == momentum and not model.training


def test_recalibration_keeps_the_statistics_of_a_norm_that_sees_one_value_per_channel():
    from edgeopt.pruning.signals import recalibrate_batch_norm

    torch.manual_seed(0)
    # the second norm sees a 1x1 map: one example gives it one value per channel
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(4)).eval()
    model[3].running_mean.fill_(0.5)
    x = torch.randn(1, 1, 8, 8) * 3 + 1
    assert recalibrate_batch_norm(model, [x], batches=1, batch_size=1) == 2
    with torch.no_grad():
        pre = model[0](x)
    assert torch.allclose(model[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(model[3].running_mean, torch.full((4,), 0.5))
    assert not model[3].training and int(model[3].num_batches_tracked) == 0
