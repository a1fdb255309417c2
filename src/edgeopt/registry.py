"""One registry: technique kind -> (config type, handler). Techniques register themselves."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgeopt.errors import ConfigError, ConfigTypeError, EdgeoptError

Handler = Callable[..., "Applied"]
H = TypeVar("H", bound=Handler)


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a technique's handler returns: the new model and the statistics it recorded, keyed
    by what they describe ("quant", "prune", ...); each has to_dict() for the report."""

    model: Any
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __iter__(self) -> Any:  # model, stats = eo.apply_with_stats(...)
        return iter((self.model, self.stats))


class RegistryError(EdgeoptError, ValueError):
    """A technique registered twice, or under a config without a kind."""


@dataclasses.dataclass(frozen=True)
class Technique:
    kind: str  # the recipe's `technique:` tag, e.g. "quantize"
    config: type
    handler: Handler
    # refuses, before any work, configs this version cannot honour (combinations of valid values)
    check: Callable[[Any], None] | None = None


_TECHNIQUES: dict[str, Technique] = {}


def register(config_type: type, *, check: Callable[[Any], None] | None = None
             ) -> Callable[[H], H]:
    """Decorator: make `handler` the way to apply configs of `config_type` (its `kind`).

    `check(config)` raises for configs the handler cannot honour; recipes call it when they are
    parsed, so such a stage fails before the baseline is trained."""

    def decorate(handler: H) -> H:
        kind = getattr(config_type, "kind", "")
        if not kind:
            raise RegistryError(f"{config_type.__name__} has no `kind`; set the class variable "
                                "to the recipe's technique name.")
        taken = _TECHNIQUES.get(kind) or next(
            (t for t in _TECHNIQUES.values() if t.config is config_type), None)
        if taken is not None:
            raise RegistryError(f"technique {kind!r} ({config_type.__name__}) is already "
                                f"registered to {taken.handler.__module__}."
                                f"{taken.handler.__qualname__}.")
        _TECHNIQUES[kind] = Technique(kind, config_type, handler, check)
        return handler

    return decorate


def load_techniques() -> None:
    """Import every technique package's `apply` module (importing registers its handler).
    Looked up as files: find_spec would import every package, the ONNX exporter's too."""
    import edgeopt

    for apply in sorted(Path(edgeopt.__path__[0]).glob("*/apply.py")):
        importlib.import_module(f"edgeopt.{apply.parent.name}.apply")


def techniques() -> list[Technique]:
    load_techniques()
    return [_TECHNIQUES[k] for k in sorted(_TECHNIQUES)]


def technique(kind: str) -> Technique:
    load_techniques()
    if kind not in _TECHNIQUES:
        raise ConfigError(f"unknown technique {kind!r}; valid: {', '.join(sorted(_TECHNIQUES))}.")
    return _TECHNIQUES[kind]


def check_supported(config: object) -> None:
    """Run the technique's own refusal of unsupported configs (a no-op where it has none)."""
    entry = _entry_for(config)
    if entry is not None and entry.check is not None:
        entry.check(config)


def handler_for(config: object) -> Handler:
    entry = _entry_for(config)
    if entry is not None:
        return entry.handler
    known = ", ".join(sorted(t.config.__name__ for t in _TECHNIQUES.values())) or "none"
    raise ConfigTypeError(
        f"no technique is registered for {type(config).__name__}; registered configs: {known}.")


def _entry_for(config: object) -> Technique | None:
    load_techniques()
    return next((t for t in _TECHNIQUES.values() if type(config) is t.config), None)
