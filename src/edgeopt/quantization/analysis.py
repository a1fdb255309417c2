"""Per-layer sensitivity: quantize one layer at a time and measure what it does to the output."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from edgeopt.data import collect_labeled
from edgeopt.progress import bar as progress_bar
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.config import QuantConfig
from edgeopt.quantization.primitives import sqnr_db


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    name: str
    type: str
    sqnr_db: float  # model output, only this layer quantized, vs float
    agreement: float  # top-1 agreement with the float model
    accuracy_drop: float | None  # points, when the evaluation data has labels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, config: QuantConfig, data: Any, eval_data: Any = None,
                      *, max_samples: int = 512, progress: bool = True
                      ) -> list[LayerSensitivity]:
    """For every quantizable layer, quantize it alone (others float) and compare outputs.

    `data` calibrates (or trains, for QAT); `eval_data` (default: `data`) is what the outputs are
    compared on. Sorted from most to least sensitive (lowest SQNR first).
    """
    from edgeopt.api import apply

    inputs, labels = collect_labeled(eval_data if eval_data is not None else data, max_samples,
                                     what="evaluation data")
    reference = model.eval()(inputs)
    gm = qgraph.trace(model)
    names = qgraph.weight_layer_names(gm, config.exclude)
    rows = []
    for name in progress_bar(names, desc="sensitivity", unit="layer", disable=not progress,
                             leave=False):
        others = tuple(n for n in names if n != name)
        single = dataclasses.replace(config, exclude=config.exclude + others, sensitivity=False)
        output = apply(model, single, data=data)(inputs)
        rows.append(LayerSensitivity(
            name=name, type=type(gm.get_submodule(name)).__name__,
            sqnr_db=sqnr_db(reference, output),
            agreement=float((output.argmax(-1) == reference.argmax(-1)).float().mean()),
            accuracy_drop=_drop(reference, output, labels)))
    return sorted(rows, key=lambda r: r.sqnr_db)


def _drop(reference: torch.Tensor, output: torch.Tensor, labels: torch.Tensor | None
          ) -> float | None:
    if labels is None:
        return None
    before = (reference.argmax(-1) == labels).float().mean()
    after = (output.argmax(-1) == labels).float().mean()
    return float(100 * (before - after))
