"""Export optimized PyTorch models to deployable formats (ONNX, int8 TFLite)."""

from __future__ import annotations

from edgeopt.export import fusions  # noqa: F401  (registers the GELU / attention translations)
from edgeopt.export.onnx import (
    export_onnx,
    register_postprocess,
    register_translation,
    translations,
    unregister_translation,
)
from edgeopt.export.tflite import export_tflite

__all__ = [
    "export_onnx",
    "export_tflite",
    "register_postprocess",
    "register_translation",
    "translations",
    "unregister_translation",
]
