"""Speed guard: where integer kernels do not pay on this runtime, keep those layers in float.

On tiny layers ONNX Runtime's Q/DQ and layout overhead can outweigh int8 arithmetic (a LeNet-5
ran 0.54x the fp32 speed fully quantized). A quantize stage with the guard on builds a few
placements — all layers, convolutions left float, Linear layers left float — measures each
exported file side by side with the source model, and keeps the fastest.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgeopt.errors import EdgeoptError

MARGIN = 0.05  # another placement must be this much faster to replace the requested one
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "all layers": (),
    "convolutions in float": ("Conv1d", "Conv2d"),
    "Linear layers in float": ("Linear",),
}


@dataclasses.dataclass
class SpeedChoice:
    chosen: str
    speedups: dict[str, float]  # placement -> speed vs the source model (interleaved medians)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fastest_placement(source: nn.Module, source_onnx: Path, config: Any, data: Any,
                      example: torch.Tensor, timing_data: Any, *, threads: int, rounds: int
                      ) -> tuple[nn.Module, SpeedChoice]:
    """Apply `config` with each placement and keep the quantized model that runs fastest.

    `source_onnx` is the source model already exported: every placement is timed against it.
    """
    from edgeopt.api import apply
    from edgeopt.export.onnx import export_onnx
    from edgeopt.runtime.measure import compare_latency

    models: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-speed-") as tmp:
        paths = [Path(source_onnx)]
        for label, excluded in PLACEMENTS.items():
            candidate = dataclasses.replace(config, exclude=tuple(config.exclude) + excluded)
            try:
                models[label] = apply(source, candidate, data=data)
            except EdgeoptError:
                if not excluded:
                    raise  # the placement the user asked for must work
                continue  # e.g. nothing left to quantize once a layer type is excluded
            paths.append(export_onnx(models[label], Path(tmp) / f"{len(paths)}.onnx", example))
        medians = compare_latency(paths, timing_data, threads=threads, rounds=rounds)
    speedups = {label: medians[0] / m for label, m in zip(models, medians[1:])}
    chosen = max(speedups, key=lambda label: speedups[label])
    if speedups[chosen] < speedups["all layers"] * (1 + MARGIN):
        chosen = "all layers"  # within timing noise: keep what the user asked for
    return models[chosen], SpeedChoice(chosen=chosen, speedups=speedups)
