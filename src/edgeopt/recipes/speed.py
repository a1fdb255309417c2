"""Speed guard: where integer kernels do not pay on this runtime, keep those layers in float.

On tiny layers ONNX Runtime's Q/DQ and layout overhead can outweigh int8 arithmetic (a LeNet-5
ran 0.54x the fp32 speed fully quantized). A stage whose config offers placements (QuantConfig
with method='ptq': all layers, convolutions left float, Linear layers left float) builds each,
measures each exported file side by side with the source model, and keeps the fastest.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgeopt.errors import EdgeoptError
from edgeopt.registry import Applied

MARGIN = 0.05  # another placement must be this much faster to replace the requested one


@dataclasses.dataclass
class SpeedChoice:
    chosen: str
    speedups: dict[str, float]  # placement -> speed vs the source model (interleaved medians)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fastest_placement(source: nn.Module, source_onnx: Path, placements: dict[str, Any],
                      data: Any, example: torch.Tensor, timing_data: Any, *, threads: int,
                      rounds: int) -> tuple[Applied, SpeedChoice]:
    """Apply each candidate config (`placements`, the requested one first, from the config's
    `placements()`) and keep the result that runs fastest against `source_onnx`, the source
    model already exported."""
    from edgeopt.api import apply_with_stats
    from edgeopt.export.onnx import export_onnx
    from edgeopt.runtime.measure import compare_latency

    requested = next(iter(placements))
    results: dict[str, Applied] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-speed-") as tmp:
        paths = [Path(source_onnx)]
        for label, candidate in placements.items():
            try:
                results[label] = apply_with_stats(source, candidate, data=data)
            except EdgeoptError:
                if label == requested:
                    raise  # the placement the user asked for must work
                continue  # e.g. nothing left to quantize once a layer type is excluded
            paths.append(export_onnx(results[label].model, Path(tmp) / f"{len(paths)}.onnx",
                                     example))
        medians = compare_latency(paths, timing_data, threads=threads, rounds=rounds)
    speedups = {label: medians[0] / m for label, m in zip(results, medians[1:])}
    chosen = max(speedups, key=lambda label: speedups[label])
    if speedups[chosen] < speedups[requested] * (1 + MARGIN):
        chosen = requested  # within timing noise: keep what the user asked for
    return results[chosen], SpeedChoice(chosen=chosen, speedups=speedups)
