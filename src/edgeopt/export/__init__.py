"""Export optimized PyTorch models to deployable formats (ONNX)."""

from __future__ import annotations

from edgeopt.export import fusions  # noqa: F401  (registers the GELU / attention translations)
from edgeopt.export.onnx import (
    export_onnx,
    register_postprocess,
    register_translation,
    translations,
    unregister_translation,
)

__all__ = [
    "export_onnx",
    "register_postprocess",
    "register_translation",
    "translations",
    "unregister_translation",
]
