"""One error family. Bad user input raises a subclass that is also a built-in exception."""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base of every error edgeopt raises on purpose."""


class ConfigError(EdgeoptError, ValueError):
    """A configuration or recipe value is invalid."""


class ConfigTypeError(EdgeoptError, TypeError):
    """A configuration or argument has the wrong type."""


class DataError(EdgeoptError, ValueError):
    """Data is missing, empty, of the wrong shape or not finite."""


class ModelError(EdgeoptError, ValueError):
    """A model cannot be handled (unknown name, unsupported layer, bad weights)."""


class ExportError(EdgeoptError, RuntimeError):
    """Export to a deployable format failed."""


class OutputError(EdgeoptError, ValueError):
    """An output location cannot be written."""


def invalid(field: str, expected: str, got: object) -> ConfigError:
    """The one message format: 'X.field must be EXPECTED; got GOT.'"""
    return ConfigError(f"{field} must be {expected}; got {got!r}.")
