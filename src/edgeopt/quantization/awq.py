"""AWQ (Lin et al. 2024): activation-aware scaling for low-bit weight quantization.

Input channels that carry large activations matter most to the output. Scaling their weight
columns up by s_j = mean|x_j|^alpha (and the input down by the same factor, folded into the
producer like SmoothQuant's) gives them finer quantization steps. alpha is searched on a grid
for every group of Linears sharing an input, minimizing the group's output error with the
weights quantized as the config says; alpha = 0 (no scaling) is a candidate, so the chosen
scaling never does worse than round-to-nearest on the calibration data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.quantization.config import QuantSpec
from edgeopt.quantization.mixed import simulate_weight
from edgeopt.quantization.smoothquant import rescale_groups


@torch.no_grad()
def awq_factors(act_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean|x_j|^alpha, normalized so that max * min == 1 (the scale's overall level is free)."""
    s = act_mean.clamp(min=1e-8).pow(alpha)
    return s / torch.sqrt(s.max() * s.min())


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], spec: QuantSpec, grid: int = 20
                 ) -> tuple[torch.Tensor, float, float, float]:
    """Best factor for inputs x [rows, in] and weights [out, in] sharing them: returns
    (s, alpha, output MSE without scaling, output MSE with s)."""
    references = [x @ w.T for w in weights]
    act_mean = x.abs().mean(dim=0)
    best: tuple[torch.Tensor, float, float] | None = None
    plain = float("nan")
    for alpha in torch.linspace(0.0, 1.0, grid + 1).tolist():
        s = awq_factors(act_mean, alpha)
        error = sum(float(((x / s) @ simulate_weight(w * s, spec).T - r).pow(2).mean())
                    for w, r in zip(weights, references))
        if alpha == 0.0:
            plain = error
        if best is None or error < best[2]:
            best = (s, alpha, error)
    assert best is not None
    return best[0], best[1], plain, best[2]


def apply_awq(gm: fx.GraphModule, names: list[str], inputs_of: Callable[[str], torch.Tensor | None],
              spec_of: Callable[[str, nn.Module], QuantSpec], rows: int = 4096
              ) -> dict[str, dict[str, Any]]:
    """Scale every group of Linears; `inputs_of(name)` gives a Linear's float input."""

    def choose(name: str, layers: list[nn.Linear]) -> tuple[torch.Tensor, dict] | None:
        x = inputs_of(name)
        if x is None:
            return None
        x = x.reshape(-1, x.shape[-1])[:rows].float()
        spec = spec_of(name, layers[0])
        s, alpha, before, after = search_scale(x, [layer.weight.detach() for layer in layers],
                                               spec)
        return s, {"awq_alpha": alpha, "awq_loss_nearest": before, "awq_loss": after}

    return rescale_groups(gm, names, choose, "awq")
