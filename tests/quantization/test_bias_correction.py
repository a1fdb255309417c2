import copy
import dataclasses

import torch
import torch.nn as nn
from qhelpers import ds_cnn, images

import edgeopt as eo
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.bias_correction import (
    analytical_bias_shift,
    empirical_bias_shift,
    expected_relu_gaussian,
    input_means,
)
from edgeopt.quantization.reconstruct import capture


def test_expected_relu_of_gaussian_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([-1.0, 0.0, 0.5, 2.0]), torch.tensor([0.5, 1.0, 2.0, 0.1])
    samples = mean + std * torch.randn(200_000, 4, generator=g)
    reference = torch.relu(samples).mean(0)
    assert torch.allclose(expected_relu_gaussian(mean, std), reference, atol=0.01)
    assert torch.allclose(expected_relu_gaussian(torch.tensor([-1.0, 2.0]), torch.zeros(2)),
                          torch.tensor([0.0, 2.0]))


def test_analytical_shift_matches_sampled_expectation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g)
    wq = w + 0.05 * torch.randn(w.shape, generator=g)
    mean = torch.tensor([0.5, 1.0, -0.2, 2.0])
    x = mean.reshape(1, 4, 1, 1) + 0.3 * torch.randn(2000, 4, 3, 3, generator=g)
    sampled = torch.nn.functional.conv2d(x, wq - w).mean(dim=(0, 2, 3))
    shift = analytical_bias_shift(w, wq, mean, "conv")
    assert torch.allclose(shift, -sampled, atol=0.02)
    dw = torch.randn(4, 1, 3, 3, generator=g)
    dw_sampled = torch.nn.functional.conv2d(x, dw, groups=4).mean(dim=(0, 2, 3))
    assert torch.allclose(analytical_bias_shift(torch.zeros_like(dw), dw, mean, "depthwise"),
                          -dw_sampled, atol=0.06)


def test_empirical_shift_is_the_channel_mean_difference():
    a, b = torch.randn(8, 3, 5, 5), torch.randn(8, 3, 5, 5)
    assert torch.allclose(empirical_bias_shift(a, b, 1), (a - b).mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(empirical_bias_shift(a[:, :, 0], b[:, :, 0], -1),
                          (a - b)[:, :, 0].reshape(-1, 5).mean(0), atol=1e-6)


def test_input_means_follow_batch_norm_through_relu():
    gm = qgraph.trace(copy.deepcopy(ds_cnn(relu6=False)))
    stats: dict = {}
    qgraph.fold_batch_norm(gm, stats)
    means = input_means(gm, qgraph.weight_layer_names(gm, ()), stats)
    assert set(means) == {"3", "6"}
    beta, gamma = stats["0"]
    assert torch.allclose(means["3"], expected_relu_gaussian(beta, gamma))


def _channel_bias(model: nn.Module, q: nn.Module, x: torch.Tensor) -> float:
    """Mean absolute per-class offset of the quantized logits from the float ones."""
    with torch.no_grad():
        return float((q(x) - model(x)).mean(0).abs().mean())


def test_empirical_bias_correction_reduces_the_output_mean_error():
    model, x = ds_cnn(relu6=False), images(256, seed=5)
    w3 = eo.QuantSpec(bits=3, granularity="per_tensor")
    plain = eo.apply(model, eo.QuantConfig(weights=w3), data=[x])
    corrected, corrected_stats = eo.apply_with_stats(model, eo.QuantConfig(weights=w3, bias_correction=True), data=[x])
    test = images(256, seed=6)
    assert _channel_bias(model, corrected, test) < 0.5 * _channel_bias(model, plain, test)
    stats = corrected_stats["quant"]
    assert stats.methods["refinement"]["bias_corrected"] == 4
    assert all("bias_correction_max" in row for row in stats.layers)


def test_analytical_bias_correction_needs_no_data_and_centres_the_layer_output():
    model = ds_cnn(relu6=False)
    w3 = eo.QuantSpec(bits=3, granularity="per_tensor")
    config = eo.QuantConfig(method="weight_only", activations=None, weights=w3)
    plain = eo.apply(model, config)
    corrected, corrected_stats = eo.apply_with_stats(model, dataclasses.replace(config, bias_correction=True))  # no data
    assert corrected_stats["quant"].methods["refinement"][
        "bias_correction"] == "analytical"
    float_gm = qgraph.trace(copy.deepcopy(model))
    qgraph.fold_batch_norm(float_gm)
    x = capture(float_gm, "6", [images(256, seed=7)])  # the pointwise layer's float input
    with torch.no_grad():
        reference = float_gm.get_submodule("6")(x)
        before = (plain.get_submodule("6")(x) - reference).mean(dim=(0, 2, 3)).abs().mean()
        after = (corrected.get_submodule("6")(x) - reference).mean(dim=(0, 2, 3)).abs().mean()
    assert float(after) < 0.5 * float(before)
