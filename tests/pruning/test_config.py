import pytest

import edgeopt as eo
from edgeopt.config import config_type
from edgeopt.errors import ConfigError, ConfigTypeError
from edgeopt.pruning import AdvancedPrune, PruneConfig


def test_defaults_and_plain_strings():
    c = PruneConfig(structure="channel", criterion="taylor", scope="global", schedule="iterative")
    assert c.structure.value == "channel" and c.criterion.value == "taylor"
    assert c.scope.value == "global" and c.schedule.value == "iterative"
    assert PruneConfig().sparsity == 0.5 and PruneConfig().finetune_epochs == 0
    assert eo.PruneConfig is PruneConfig and config_type("prune") is PruneConfig


def test_round_trip_through_dict():
    c = PruneConfig(sparsity=0.75, structure="n:m", n=1, m=4, exclude=("fc*",),
                    advanced=AdvancedPrune(round_to=4, sensitivity_levels=(0.5, 0.25)))
    assert PruneConfig.from_dict(c.to_dict()) == c
    assert c.advanced.sensitivity_levels == (0.25, 0.5)


def test_sparsity_message_names_field_and_range():
    with pytest.raises(ConfigError, match=r"PruneConfig.sparsity must be a float in \[0, 1\); "
                                          r"got 1.5\."):
        PruneConfig(sparsity=1.5)
    with pytest.raises(ValueError, match="PruneConfig.sparsity"):
        PruneConfig(sparsity=-0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"structure": "n:m", "n": 5, "m": 4}, r"PruneConfig.n must be an int in \[1, m=4\]"),
    ({"structure": "n:m", "sparsity": 0.8}, r"1 - n/m = 0.5"),
    ({"structure": "n:m", "scope": "global"}, "PruneConfig.scope"),
    ({"structure": "n:m", "criterion": "sensitivity"}, "PruneConfig.criterion"),
    ({"schedule": "polynomial"}, "PruneConfig.finetune_epochs"),
    ({"regularization": "l1"}, "PruneConfig.reg_epochs"),
    ({"rewind": "init"}, "PruneConfig.rewind"),
    ({"rewind": "init", "schedule": "iterative", "finetune_epochs": 1, "structure": "channel"},
     "PruneConfig.structure"),
    ({"structure": "blocks"}, "PruneConfig.structure must be one of"),
    ({"steps": 0}, "PruneConfig.steps"),
    ({"lr": 0.0}, "PruneConfig.lr"),
])
def test_bad_combinations_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**kwargs)


def test_wrong_types_are_type_errors():
    with pytest.raises(ConfigTypeError, match="PruneConfig.finetune_epochs"):
        PruneConfig(finetune_epochs="2")
    with pytest.raises(ConfigError, match="AdvancedPrune.max_layer_sparsity"):
        AdvancedPrune(max_layer_sparsity=1.0)


def test_recipe_stage_maps_onto_the_config():
    from edgeopt.recipes.schema import parse_recipe

    recipe = parse_recipe({"model": "lenet300", "data": "mnist5k", "stages": [
        {"name": "pruned", "technique": "prune",
         "config": {"sparsity": 0.8, "structure": "channel", "finetune_epochs": 2,
                    "advanced": {"round_to": 8}}},
        {"name": "int8", "technique": "quantize", "from": "pruned"}]})
    config = recipe.stages[0].config
    assert config == PruneConfig(sparsity=0.8, structure="channel", finetune_epochs=2,
                                 advanced=AdvancedPrune(round_to=8))
