"""The example recipes shipped in examples/ stay valid as the configs evolve."""

from pathlib import Path

import pytest

from edgeopt.recipes.schema import load_recipe

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages and all(stage.config.kind for stage in recipe.stages)


def test_examples_exist():
    assert len(EXAMPLES) >= 2
