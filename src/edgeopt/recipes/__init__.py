"""Recipes: YAML -> validated configs and stages -> a run folder."""

from edgeopt.recipes.run import RunResult, StageResult, run_recipe
from edgeopt.recipes.schema import DEFAULT_RECIPE, Recipe, load_recipe

__all__ = ["DEFAULT_RECIPE", "Recipe", "RunResult", "StageResult", "load_recipe", "run_recipe"]
