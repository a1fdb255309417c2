import pytest
import torch
import torch.nn as nn
from qhelpers import ds_cnn, images

import edgeopt as eo
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.quantization import AdvancedQuantConfig
from edgeopt.quantization.datafree import statistics_loss, synthesize_inputs

FAST = AdvancedQuantConfig(input_shape=(1, 8, 8), data_free_samples=64, data_free_steps=60)


def test_synthetic_inputs_match_batch_norm_statistics_better_than_noise():
    model = ds_cnn()
    synthesis = synthesize_inputs(model, (1, 8, 8), samples=64, steps=80, progress=False)
    noise = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        assert float(statistics_loss(model, synthesis.inputs)) < 0.5 * float(
            statistics_loss(model, noise))
    assert synthesis.loss_end < synthesis.loss_start and synthesis.batch_norms == 3
    assert all(p.requires_grad for p in model.parameters())  # the caller's model is untouched


def test_data_free_ptq_needs_no_data_and_keeps_accuracy():
    model, x = ds_cnn(), images(256, seed=8)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(data_free=True, advanced=FAST))
    stats = q_stats["quant"]
    assert stats.methods["data_free"]["samples"] == 64
    assert stats.calibration_samples == 64
    with torch.no_grad():
        agree = float((q(x).argmax(1) == model(x).argmax(1)).float().mean())
    assert agree > 0.9


def test_data_free_on_a_model_without_batch_norm_says_why_it_cannot_work():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ModelError, match="no BatchNorm layer.*nothing to synthesize"):
        eo.apply(mlp, eo.QuantConfig(data_free=True))


def test_data_free_without_data_or_input_shape_asks_for_the_shape():
    with pytest.raises(ConfigError, match=r"data_free=True.*data=an example input.*"
                                          r"advanced\.input_shape|input_shape=\("):
        eo.apply(ds_cnn(), eo.QuantConfig(data_free=True))


def test_data_free_takes_the_shape_from_an_example_input():
    adv = AdvancedQuantConfig(data_free_samples=64, data_free_steps=60)
    model, x = ds_cnn(), images(256, seed=8)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(data_free=True, advanced=adv), data=torch.randn(1, 1, 8, 8))
    info = q_stats["quant"].methods["data_free"]
    assert info["input_shape"] == [1, 8, 8] and info["input_shape_from"] == "data"
    assert info["samples"] == 64  # synthesized: the example only gave the shape
    with torch.no_grad():
        assert float((q(x).argmax(1) == model(x).argmax(1)).float().mean()) > 0.9


def test_data_free_example_without_batch_dimension_is_refused_before_synthesis():
    with pytest.raises(DataError, match=r"input shape \(8, 8\).*from data.*batch dimension"):
        eo.apply(ds_cnn(), eo.QuantConfig(data_free=True), data=torch.randn(1, 8, 8))


def test_data_free_sensitivity_runs_on_synthesized_inputs_not_the_example(monkeypatch):
    from edgeopt.quantization import analysis

    seen = []
    measure = analysis.layer_sensitivity
    monkeypatch.setattr(analysis, "layer_sensitivity",
                        lambda model, config, data: seen.append(data) or measure(model, config,
                                                                                 data))
    adv = AdvancedQuantConfig(data_free_samples=32, data_free_steps=20)
    q, q_stats = eo.apply_with_stats(ds_cnn(), eo.QuantConfig(data_free=True, sensitivity=True, advanced=adv),
                 data=torch.randn(1, 1, 8, 8))
    assert len(q_stats["quant"].sensitivity) == 4
    assert sum(batch.shape[0] for batch in seen[0]) == 32  # the synthesized samples


@pytest.mark.parametrize("config", [
    eo.QuantConfig(),
    eo.QuantConfig(method="weight_only", activations=None, rounding="adaround"),
    eo.QuantConfig(method="weight_only", activations=None, rounding="gptq"),
    eo.QuantConfig(method="dynamic", smoothquant=True),
])
def test_data_driven_methods_without_data_suggest_the_data_free_option(config):
    with pytest.raises(DataError, match="needs calibration data.*data_free=True"):
        eo.apply(ds_cnn(), config)
