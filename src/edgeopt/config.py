"""Base for technique configs: frozen, keyword-only, serializable with a type tag and version."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, TypeVar

from edgeopt.errors import ConfigError, ConfigTypeError, invalid

CONFIG_VERSION = 1
C = TypeVar("C", bound="Config")


class Config:
    """Mixin for frozen dataclass configs. Subclasses set `kind` (the recipe/type tag)."""

    kind: ClassVar[str] = ""  # the technique name the registry files the handler under

    def validate(self) -> None:  # overridden where fields interact
        """Raise ConfigError for any invalid field; called from __post_init__."""

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str | None = None) -> C:
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ConfigTypeError(f"{where} must be a mapping; got {type(data).__name__}.")
        data = {k: v for k, v in data.items() if k not in ("type", "version")}
        return _build(cls, data, where)


def config_type(kind: str) -> type[Config]:
    """The config class of a registered technique (see edgeopt.registry)."""
    from edgeopt.registry import technique

    return technique(kind).config


def config_kinds() -> list[str]:
    from edgeopt.registry import techniques

    return [t.kind for t in techniques()]


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return {k: v for k, v in value.to_dict().items() if k not in ("type", "version")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]} is not a known field; valid: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _from_plain(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a missing required field
        raise ConfigTypeError(f"{where}: {exc}.") from None


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """Turn nested mappings back into nested dataclasses following the type hints."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        return None
    for option in options:
        if isinstance(option, type) and dataclasses.is_dataclass(option) and isinstance(value, dict):
            return _build(option, value, where)
    for option in options:
        origin, args = typing.get_origin(option), typing.get_args(option)
        if origin is tuple and isinstance(value, list | tuple):
            return tuple(_from_plain(args[0], v, f"{where}[{i}]") if args else v
                         for i, v in enumerate(value))
        if origin is dict and isinstance(value, dict) and len(args) == 2:
            return {k: _from_plain(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce_fields(obj: Any) -> None:
    """Accept plain strings for str-enum fields and check basic field types."""
    hints = typing.get_type_hints(type(obj))
    name = type(obj).__name__
    for f in dataclasses.fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        coerced = _coerce(hint, value, f"{name}.{f.name}")
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


def _coerce_container(hint: Any, value: Any, where: str) -> Any:
    """A tuple / list / dict field: the container type, then each item against its hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(f"{where} must be a mapping; got {type(value).__name__} "
                                  f"{value!r}.")
        if len(args) != 2:
            return value
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if not isinstance(value, list | tuple):
        raise ConfigTypeError(f"{where} must be a list; got {type(value).__name__} {value!r}.")
    if len(args) == 2 and args[1] is Ellipsis:
        items = [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif len(args) == 1 or (args and len(args) == len(value)):
        hints = args * len(value) if len(args) == 1 else args
        items = [_coerce(h, v, f"{where}[{i}]") for i, (h, v) in enumerate(zip(hints, value))]
    elif args:
        raise invalid(where, f"a list of {len(args)} items", value)
    else:
        items = list(value)
    return type(value)(items) if origin is not tuple else tuple(items)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return value
    for option in options:
        if isinstance(option, type) and issubclass(option, enum.Enum):
            if isinstance(value, option):
                return value
            try:
                return option(value)
            except ValueError:
                choices = ", ".join(repr(m.value) for m in option)
                raise invalid(where, f"one of {choices}", value) from None
    for option in options:
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > 2**1023:  # float() would overflow
                raise invalid(where, "a finite float", value)
            return float(value)
        if option in (int, str, bool) and isinstance(value, option):
            if option is int and isinstance(value, bool):
                continue
            return value
        if option is typing.Any:
            return value
        if typing.get_origin(option) in (tuple, list, dict):
            try:
                return _coerce_container(option, value, where)
            except (ConfigError, ConfigTypeError):
                if len(options) == 1:
                    raise
        if isinstance(option, type) and dataclasses.is_dataclass(option) and isinstance(value, option):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigTypeError(f"{where} must be {expected}; got {type(value).__name__} {value!r}.")
