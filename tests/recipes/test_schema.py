import pytest

from edgeopt.errors import ConfigError, ConfigTypeError
from edgeopt.recipes.schema import DEFAULT_RECIPE, load_recipe


def test_default_recipe_is_valid():
    recipe = load_recipe(None)
    assert recipe.model == DEFAULT_RECIPE["model"]
    assert [s.name for s in recipe.stages] == ["int8"]
    assert recipe.stages[0].source == "baseline"


def test_yaml_file_maps_onto_configs(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: lenet300\ndata: digits\nstages:\n  - name: q\n    technique: quantize\n"
                    "    config: {calibration_samples: 64, weights: {bits: 4}}\n")
    recipe = load_recipe(path)
    config = recipe.stages[0].config
    assert config.calibration_samples == 64 and config.weights.bits == 4


@pytest.mark.parametrize("raw,match,error", [
    ({"modle": "resnet8"}, r"recipe.modle is not a known key; valid: data, epochs", ConfigError),
    ({"model": "resnet9"}, r"recipe.model must be one of .*resnet8", ConfigError),
    ({"data": "cifar"}, r"recipe.data must be one of .*mnist5k", ConfigError),
    ({"seed": "zero"}, r"recipe.seed must be int", ConfigTypeError),
    ({"stages": [{"technique": "quantise"}]}, r"recipe.stages\[0\].technique must be one of .*quantize",
     ConfigError),
    ({"stages": [{"technique": "quantize", "config": {"weights": {"bits": 1}}}]},
     r"QuantSpec.bits must be an int in \[2, 16\]", ConfigError),
    ({"stages": [{"technique": "quantize", "config": {"calibration": "best"}}]},
     r"calibration must be one of 'minmax'", ConfigError),
    ({"stages": [{"technique": "quantize", "config": {"typo": 1}}]},
     r"recipe.stages\[0\].config.typo is not a known field", ConfigError),
    ({"stages": [{"technique": "quantize", "from": "nowhere"}]},
     r"recipe.stages\[0\].from must be an earlier stage", ConfigError),
    ({"stages": [{"technique": "quantize"}, {"technique": "quantize"}]},
     r"recipe.stages\[1\].name must be a unique name", ConfigError),
    ({"stages": [{"technique": "quantize", "speed_guard": "yes"}]},
     r"recipe.stages\[0\].speed_guard must be true or false", ConfigTypeError),
    ({"measure": {"threads": 0}}, r"recipe.measure.threads must be a positive int", ConfigError),
    ({"measure": {"speed_threads": []}}, r"speed_threads must be a non-empty list", ConfigError),
    ({"model": "tcn1d", "data": "mnist5k"}, r"tcn1d", Exception),
    ({"stages": {"technique": "quantize"}}, r"recipe.stages must be a list", ConfigTypeError),
    # unsupported combinations of valid values fail at parse time, before any training
    ({"stages": [{"technique": "quantize", "config": {"method": "qat", "rounding": "adaround"}}]},
     r"recipe.stages\[0\].config: QuantConfig.rounding='adaround' is not supported", ConfigError),
])
def test_bad_recipes_name_the_field(raw, match, error):
    with pytest.raises(error, match=match):
        load_recipe(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [resnet8\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(bad)
