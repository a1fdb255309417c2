"""Import the user's code through the one explicit door: a "module:function" reference."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, invalid


def check_reference(ref: Any, field: str) -> tuple[str, str]:
    """Split "package.module:function" into its parts, refusing anything else."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise invalid(field, "a 'module:function' reference", ref)
    module, name = ref.split(":")
    parts = module.split(".") + [name]
    if not all(p.isidentifier() for p in parts):
        raise invalid(field, "a 'module:function' reference of Python identifiers", ref)
    return module, name


def resolve(ref: str, field: str, root: Path | None) -> Callable[..., Any]:
    """The callable `ref` names, importing its module with `root` first on sys.path."""
    module_name, name = check_reference(ref, field)
    _forget_if_elsewhere(module_name, root)
    with _on_path(root):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            where = f" (looked in {str(root)!r} and the installed packages)" if root else ""
            raise ConfigError(f"{field}: module {module_name!r} cannot be imported{where}: "
                              f"{exc}.") from None
        except Exception as exc:  # the user's module raised while importing
            raise ConfigError(f"{field}: importing {module_name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from None
    target = getattr(module, name, None)
    if not callable(target):
        raise ConfigError(f"{field}: {module_name!r} has no callable {name!r}.")
    return target


def call(func: Callable[..., Any], kwargs: dict[str, Any], field: str) -> Any:
    """Call the user's factory; whatever it raises becomes one error naming the field."""
    try:
        return func(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{field}: the factory raised {type(exc).__name__}: {exc}") from None


def _forget_if_elsewhere(module_name: str, root: Path | None) -> None:
    """Two recipes may each ship a `my_models.py`: never reuse one imported from elsewhere."""
    if root is None or module_name not in sys.modules:
        return
    top = module_name.split(".")[0]
    local = root / f"{top}.py", root / top / "__init__.py"
    origin = getattr(sys.modules[module_name], "__file__", None)
    if any(p.is_file() for p in local) and (
            not origin or root.resolve() not in Path(origin).resolve().parents):
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]


@contextmanager
def _on_path(root: Path | None) -> Iterator[None]:
    if root is None:
        yield
        return
    entry = str(root.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
