"""The run's starting point: data splits and the baseline model, zoo or the user's own."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from edgeopt.datasets import Splits
from edgeopt.errors import ConfigError
from edgeopt.recipes.schema import Recipe
from edgeopt.sources import ModelSource, load_data, load_model


def load_splits(recipe: Recipe) -> Splits:
    from edgeopt import datasets

    if isinstance(recipe.data, str):
        return datasets.load(recipe.data, seed=recipe.seed)
    shape = recipe.model.input_shape if isinstance(recipe.model, ModelSource) else None
    return load_data(recipe.data, shape, recipe.seed)


def load_baseline(recipe: Recipe, splits: Splits, progress: bool) -> nn.Module:
    """A zoo model trained on the data (cached for built-in data), or the user's model as given."""
    from edgeopt import zoo

    if isinstance(recipe.model, ModelSource):
        model = load_model(recipe.model)
    elif isinstance(recipe.data, str):
        zoo.check_input_shape(recipe.model, splits.input_shape)
        model = zoo.pretrained(recipe.model, recipe.data, seed=recipe.seed, epochs=recipe.epochs,
                               progress=progress)
    else:
        model = _train_zoo_model(recipe, splits, progress)
    check_runs(model, splits)
    return model


def _train_zoo_model(recipe: Recipe, splits: Splits, progress: bool) -> nn.Module:
    """A zoo architecture trained on the user's labeled data (not cached)."""
    from edgeopt import zoo
    from edgeopt.training import fit

    if splits.num_classes < 2:
        raise ConfigError(f"recipe.model {recipe.model!r} is trained on recipe.data, which needs "
                          "class labels ('y' of int class indices); for label-free data bring "
                          "your own trained model (recipe.model: factory + weights).")
    zoo.check_input_shape(recipe.model, splits.input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = zoo.create(recipe.model, splits.input_shape, splits.num_classes)
    fit(model, splits.train, splits.val, epochs=recipe.epochs or 15, seed=recipe.seed,
        progress=progress, desc=f"{recipe.model} on {recipe.data_label}")
    return model.eval()


def check_runs(model: nn.Module, splits: Splits) -> torch.Tensor:
    """Run one test sample through the model: it must accept the data and return a tensor."""
    bad = next((name for name, value in model.state_dict().items()
                if isinstance(value, torch.Tensor) and value.is_floating_point()
                and not torch.isfinite(value).all()), None)
    if bad is not None:  # inf weights can still give finite outputs, and break every stage
        raise ConfigError(f"recipe.model weight {bad!r} holds NaN or inf values; check "
                          "recipe.model.weights.")
    example = splits.test[0][0].unsqueeze(0)
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise ConfigError(f"recipe.model does not run on recipe.data samples of shape "
                          f"{list(example.shape[1:])} ({example.dtype}): {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"recipe.model must return one tensor; it returned "
                          f"{_describe(out)}. Wrap it so forward returns the tensor to keep.")
    if not torch.isfinite(out.float()).all():
        raise ConfigError("recipe.model returns NaN or inf on a test sample; check "
                          "recipe.model.weights and the data's normalization.")
    return out


def resolve_metric(recipe: Recipe, splits: Splits) -> str:
    """The recipe's metric, checked against the data; default top1 with labels, else agreement."""
    labeled = _labels(splits)
    metric = recipe.metric or ("top1" if splits.num_classes > 1 else "agreement")
    if metric == "top1" and splits.num_classes < 2:
        what = "has no labels" if labeled is None else "has labels that are not class indices"
        raise ConfigError(f"recipe.metric top1 needs class labels, but recipe.data {what}; use "
                          "agreement, cosine or mse.")
    return metric


def _labels(splits: Splits) -> Any:
    sample = splits.test[0]
    return sample[1] if len(sample) > 1 else None


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__
