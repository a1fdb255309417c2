"""PruneConfig.layer_sparsity: a sparsity per layer (what a search chooses), others whole."""

import pytest
import torch

import edgeopt as eo
from helpers import toy_classification


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4)).eval()


def test_channel_plan_prunes_each_named_layer_to_its_own_sparsity():
    data = toy_classification(n=64, shape=(1, 8, 8))
    config = eo.PruneConfig(structure="channel", sparsity=0.0,
                            layer_sparsity={"1": 0.5, "3": 0.0})
    pruned = eo.apply(_mlp(), config, data=data)
    assert pruned[1].out_features == 16 and pruned[3].out_features == 16


def test_weight_plan_masks_only_the_named_weight():
    config = eo.PruneConfig(sparsity=0.0, layer_sparsity={"3.weight": 0.75})
    pruned = eo.apply(_mlp(), config)
    assert float((pruned[3].weight == 0).float().mean()) == pytest.approx(0.75)
    assert float((pruned[1].weight == 0).float().mean()) == 0.0


def test_bad_layer_sparsity_names_the_field():
    with pytest.raises(ValueError, match=r"PruneConfig.layer_sparsity\['fc'\]"):
        eo.PruneConfig(layer_sparsity={"fc": 1.5})
    config = eo.PruneConfig(structure="channel", layer_sparsity={"fc": 0.5})
    assert eo.PruneConfig.from_dict(config.to_dict()) == config
