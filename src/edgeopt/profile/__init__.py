"""Where a model's size, compute and memory go: per-layer params and MACs, peak activations."""

from __future__ import annotations

import sys
import types
from typing import Any

from edgeopt.profile.layers import LayerProfile, ModelProfile, profile, register_macs
from edgeopt.profile.memory import ActivationProfile, profile_onnx
from edgeopt.profile.render import human, markdown_table, render_markdown

__all__ = [
    "ActivationProfile",
    "LayerProfile",
    "ModelProfile",
    "human",
    "markdown_table",
    "profile",
    "profile_onnx",
    "register_macs",
    "render_markdown",
]


class _CallableModule(types.ModuleType):
    """`edgeopt.profile(model, x)` works even once this subpackage shadows the function.

    Importing `edgeopt.profile.*` binds the attribute `edgeopt.profile` to this package, which
    would hide the lazily exported function of the same name; calling the package calls it.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> ModelProfile:
        return profile(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
