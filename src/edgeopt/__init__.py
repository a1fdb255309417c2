"""edgeopt: make PyTorch models small and fast for edge devices, and prove it on ONNX Runtime."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> the module that defines them. Loaded on first use so `edgeopt --help` is instant.
_LAZY = {
    "apply": "edgeopt.api",
    "apply_with_stats": "edgeopt.api",
    "Applied": "edgeopt.registry",
    "QuantConfig": "edgeopt.quantization.config",
    "QuantSpec": "edgeopt.quantization.config",
    "AdvancedQuantConfig": "edgeopt.quantization.config",
    "MixedPrecision": "edgeopt.quantization.config",
    "PruneConfig": "edgeopt.pruning.config",
    "export_onnx": "edgeopt.export.onnx",
    "export_tflite": "edgeopt.export.tflite",
    "export_c": "edgeopt.deploy.c",
    "CExport": "edgeopt.deploy.c",
    "measure": "edgeopt.runtime.measure",
    "Measurement": "edgeopt.runtime.measure",
    "profile": "edgeopt.profile",
    "run_recipe": "edgeopt.recipes.run",
    "quantize_checkpoint": "edgeopt.quantization.streaming",
    "DistillConfig": "edgeopt.distillation.config",
    "LowRankConfig": "edgeopt.lowrank.config",
    "ClusterConfig": "edgeopt.clustering.config",
}
_SUBMODULES = {"api", "config", "datasets", "zoo", "errors", "data", "recipes", "quantization", "pruning", "export",
               "runtime", "training", "report", "distillation", "lowrank", "clustering",
               "distributed"}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"edgeopt.{name}")
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
