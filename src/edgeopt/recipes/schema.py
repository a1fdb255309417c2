"""Recipe = model + data + stages + export + measurement, validated completely before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from edgeopt.config import Config, config_kinds, config_type
from edgeopt.errors import ConfigError, ConfigTypeError, invalid
from edgeopt.sources.data import DataSource, parse_data_source
from edgeopt.sources.models import ModelSource, parse_model_source

DEFAULT_RECIPE: dict[str, Any] = {
    "model": "resnet8",
    "data": "mnist5k",
    "seed": 0,
    "stages": [{"name": "int8", "technique": "quantize"}],
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    name: str
    config: Config
    source: str  # the stage whose model this one starts from
    data: str  # which split feeds calibration / training: train or val
    speed_guard: bool = True  # quantize (ptq): keep layers float where int8 does not pay


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeasureSettings:
    threads: int = 1
    warmup: int = 20
    runs: int = 200
    accuracy_budget: float = 0.3  # points of accuracy a stage may lose before a warning
    speed_threads: tuple[int, ...] = (1,)  # thread counts at which latency ratios are measured


METRICS = ("top1", "agreement", "cosine", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    model: str | ModelSource  # a zoo name, or the user's own model
    data: str | DataSource  # a built-in data set, or the user's own data
    metric: str | None  # None: top1 with labels, agreement without
    seed: int
    epochs: int | None
    stages: tuple[Stage, ...]
    opset: int
    measure: MeasureSettings
    source: dict[str, Any]
    target: str | None = None  # a deployment target (edgeopt.deploy.targets): does each stage fit?
    tflite: bool = False  # export.tflite: also write <stage>.tflite for every int8 stage
    root: Path | None = None  # the folder relative paths in the recipe were resolved from

    def to_dict(self) -> dict[str, Any]:
        return self.source

    @property
    def model_label(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.label

    @property
    def data_label(self) -> str:
        return self.data if isinstance(self.data, str) else self.data.label


_TOP_KEYS = {"model", "data", "metric", "seed", "epochs", "stages", "export", "measure", "target"}
_STAGE_KEYS = {"name", "technique", "config", "from", "data", "speed_guard"}


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe | None) -> Recipe:
    """Parse and fully validate a recipe file, mapping or None (the built-in default)."""
    if recipe is None:
        return parse_recipe(DEFAULT_RECIPE)
    if isinstance(recipe, Recipe):  # already parsed (e.g. derived from a user's recipe file)
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} must be UTF-8 text; byte {exc.start} is not "
                          "(save the file as UTF-8).") from None
    except OSError as exc:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read: "
                          f"{exc.strerror or exc}.") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML{line}: "
                          f"{getattr(exc, 'problem', exc)}.") from None
    if not isinstance(content, dict):
        raise ConfigTypeError(f"recipe {str(path)!r} must be a mapping of keys "
                              f"({', '.join(sorted(_TOP_KEYS))}); got {type(content).__name__}.")
    return parse_recipe(content, root=path.resolve().parent)


def parse_recipe(raw: dict[str, Any], root: Path | None = None) -> Recipe:
    """Validate a recipe mapping; relative paths in it are relative to `root` (default: cwd)."""
    from edgeopt.api import load_techniques

    load_techniques()
    _check_keys(raw, _TOP_KEYS, "recipe")
    root = root or Path.cwd()
    model = _parse_model(raw.get("model", DEFAULT_RECIPE["model"]), root)
    data = _parse_data(raw.get("data", DEFAULT_RECIPE["data"]), root)
    _check_model_data(model, data)
    metric = raw.get("metric")
    if metric is not None and metric not in METRICS:
        raise invalid("recipe.metric", f"one of {', '.join(METRICS)}", metric)
    seed = _typed(raw.get("seed", 0), int, "recipe.seed")
    epochs = raw.get("epochs")
    if epochs is not None and (_typed(epochs, int, "recipe.epochs") < 1):
        raise invalid("recipe.epochs", "a positive int", epochs)
    if epochs is not None and not isinstance(model, str):
        raise ConfigError("recipe.epochs trains a zoo model; your own model (recipe.model "
                          "mapping) is used as given, never retrained: drop recipe.epochs.")
    stages = _parse_stages(raw.get("stages", []))
    export = _mapping(raw.get("export", {}), "recipe.export")
    _check_keys(export, {"opset", "tflite"}, "recipe.export")
    opset = _typed(export.get("opset", 18), int, "recipe.export.opset")
    tflite = export.get("tflite", False)
    if not isinstance(tflite, bool):
        raise ConfigTypeError(f"recipe.export.tflite must be true or false; got {tflite!r}.")
    if not 18 <= opset <= 21:
        raise invalid("recipe.export.opset", "an int in [18, 21]", opset)
    target = _parse_target(raw.get("target"))
    return Recipe(model=model, data=data, metric=metric, seed=seed, epochs=epochs, stages=stages,
                  opset=opset, measure=_parse_measure(raw.get("measure", {})), source=raw,
                  target=target, tflite=tflite, root=root)


def _parse_target(raw: Any) -> str | None:
    from edgeopt.deploy.targets import TARGETS, names

    if raw is not None and (not isinstance(raw, str) or raw not in TARGETS):
        raise invalid("recipe.target", f"one of {', '.join(names())}", raw)
    return raw


def _parse_model(raw: Any, root: Path) -> str | ModelSource:
    from edgeopt import zoo  # lazy: imports torch

    return _name_or_mapping(raw, "model", zoo.names(), "a zoo name",
                            "'factory' (+ kwargs, weights, input_shape) or 'hf'",
                            lambda: parse_model_source(raw, root))


def _parse_data(raw: Any, root: Path) -> str | DataSource:
    from edgeopt import datasets  # lazy: imports torch

    return _name_or_mapping(raw, "data", datasets.names(), "a data set name",
                            "'train' (+ test, val), 'folder' or 'factory'",
                            lambda: parse_data_source(raw, root))


def _name_or_mapping(raw: Any, key: str, names: list[str], what: str, keys: str,
                     parse: Any) -> Any:
    """A built-in name, or a mapping describing the user's own (parsed by `parse`)."""
    if isinstance(raw, dict):
        return parse()
    if not isinstance(raw, str):
        raise ConfigTypeError(f"recipe.{key} must be {what} or a mapping with {keys}; got "
                              f"{type(raw).__name__} {raw!r}.")
    if raw not in names:
        raise invalid(f"recipe.{key}", f"one of {', '.join(names)} or a mapping with {keys}", raw)
    return raw


def _check_model_data(model: str | ModelSource, data: str | DataSource) -> None:
    from edgeopt import datasets, zoo

    if isinstance(model, str) and isinstance(data, str):
        zoo.check_input_shape(model, datasets.spec(data)[0])
    elif isinstance(model, ModelSource) and isinstance(data, str):
        shape = datasets.spec(data)[0]
        if model.input_shape is not None and model.input_shape != shape:
            raise ConfigError(f"recipe.model.input_shape {list(model.input_shape)} does not "
                              f"match recipe.data {data!r} samples {list(shape)}.")


def _parse_stages(raw: Any) -> tuple[Stage, ...]:
    if not isinstance(raw, list):
        raise ConfigTypeError(f"recipe.stages must be a list of stages; got {type(raw).__name__}.")
    stages: list[Stage] = []
    names = {"baseline"}
    for i, item in enumerate(raw):
        where = f"recipe.stages[{i}]"
        item = _mapping(item, where)
        _check_keys(item, _STAGE_KEYS, where)
        technique = _typed(item.get("technique"), str, f"{where}.technique")
        if technique not in config_kinds():
            raise invalid(f"{where}.technique", f"one of {', '.join(config_kinds())}", technique)
        name = _typed(item.get("name", technique), str, f"{where}.name")
        if name in names or not name.replace("-", "").replace("_", "").isalnum():
            raise invalid(f"{where}.name", "a unique name of letters, digits, '-' or '_' "
                          "(not 'baseline')", name)
        source = _typed(item.get("from", stages[-1].name if stages else "baseline"), str,
                        f"{where}.from")
        if source not in names:
            raise invalid(f"{where}.from", f"an earlier stage ({', '.join(sorted(names))})", source)
        split = _typed(item.get("data", "train"), str, f"{where}.data")
        if split not in ("train", "val"):
            raise invalid(f"{where}.data", "'train' or 'val'", split)
        config = config_type(technique).from_dict(_mapping(item.get("config", {}),
                                                           f"{where}.config"),
                                                  where=f"{where}.config")
        _check_supported(config, f"{where}.config")
        guard = item.get("speed_guard", True)
        if not isinstance(guard, bool):
            raise ConfigTypeError(f"{where}.speed_guard must be true or false; got {guard!r}.")
        stages.append(Stage(name=name, config=config, source=source, data=split,
                            speed_guard=guard))
        names.add(name)
    return tuple(stages)


def _check_supported(config: Config, where: str) -> None:
    """Unsupported combinations fail here, before the baseline is trained."""
    from edgeopt.registry import check_supported

    try:
        check_supported(config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_measure(raw: Any) -> MeasureSettings:
    raw = dict(_mapping(raw, "recipe.measure"))
    fields = {f.name for f in dataclasses.fields(MeasureSettings)}
    _check_keys(raw, fields, "recipe.measure")
    for key in ("threads", "warmup", "runs"):
        if key in raw and _typed(raw[key], int, f"recipe.measure.{key}") < 1:
            raise invalid(f"recipe.measure.{key}", "a positive int", raw[key])
    if "accuracy_budget" in raw:
        budget = raw["accuracy_budget"]
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0:
            raise invalid("recipe.measure.accuracy_budget", "a non-negative number (points)",
                          budget)
        raw["accuracy_budget"] = float(budget)
    if "speed_threads" in raw:
        threads = raw["speed_threads"]
        if not isinstance(threads, list) or not threads or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in threads):
            raise invalid("recipe.measure.speed_threads", "a non-empty list of positive ints",
                          threads)
        raw["speed_threads"] = tuple(threads)
    return MeasureSettings(**raw)


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}.{key} is not a known key; valid: {', '.join(sorted(allowed))}.")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigTypeError(f"{where} must be a mapping; got {type(value).__name__} {value!r}.")
    return value


def _typed(value: Any, kind: type, where: str) -> Any:
    if value is None:
        raise ConfigError(f"{where} is required.")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigTypeError(f"{where} must be {kind.__name__}; got {type(value).__name__} "
                              f"{value!r}.")
    return value
