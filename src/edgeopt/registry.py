"""One registry: config type -> handler that applies it to a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from edgeopt.errors import ConfigTypeError

Handler = Callable[..., object]
H = TypeVar("H", bound=Handler)

_HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[H], H]:
    """Decorator: make `handler` the way to apply configs of `config_type`."""

    def decorate(handler: H) -> H:
        if config_type in _HANDLERS:
            raise ValueError(f"a handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def handler_for(config: object) -> Handler:
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS)) or "none"
        raise ConfigTypeError(
            f"no technique is registered for {type(config).__name__}; registered configs: {known}."
        )
    return handler


def registered_configs() -> list[type]:
    return list(_HANDLERS)
