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
    q = eo.apply(model, eo.QuantConfig(data_free=True, advanced=FAST))
    stats = eo.quantization.apply.quant_stats(q)
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
    with pytest.raises(ConfigError, match="input_shape"):
        eo.apply(ds_cnn(), eo.QuantConfig(data_free=True))


@pytest.mark.parametrize("config", [
    eo.QuantConfig(),
    eo.QuantConfig(method="weight_only", activations=None, rounding="adaround"),
    eo.QuantConfig(method="weight_only", activations=None, rounding="gptq"),
    eo.QuantConfig(method="dynamic", smoothquant=True),
])
def test_data_driven_methods_without_data_suggest_the_data_free_option(config):
    with pytest.raises(DataError, match="needs calibration data.*data_free=True"):
        eo.apply(ds_cnn(), config)
