"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up.

Each weight is floor(w / s) + h(V) with h a rectified sigmoid of a learned V; the loss is the
layer's output error on calibration data plus a regularizer that pushes every h to 0 or 1 (its
exponent beta annealed from 20 to 2 after a warm-up). The result is the integer weights
themselves, so the quantized layer stores and exports them unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

from edgeopt.quantization.budget import MIN_ITERATIONS, PROBE_ITERATIONS, fit_iterations

ZETA, GAMMA = 1.1, -0.1
WARMUP = 0.2  # share of iterations with the rounding regularizer off


@dataclasses.dataclass(frozen=True)
class AdaRoundResult:
    q: torch.Tensor  # integer weights (as float), shaped like the weight
    loss_nearest: float  # output MSE with round-to-nearest
    loss: float  # output MSE with the learned rounding
    iterations: int


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to the fractional part, so optimization starts at the float weight."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, channel_dim: int
                        ) -> torch.Tensor:
    """Squared error summed over channels, averaged over samples and positions."""
    return (output - target).pow(2).sum(dim=channel_dim).mean()


def adaround(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor, target: torch.Tensor, *, iterations: int = 1000, lr: float = 1e-2,
    regularization: float = 0.01, batch_size: int = 32, channel_dim: int = 1,
    generator: torch.Generator | None = None, deadline: float | None = None,
    time_limit: float | None = None, min_iterations: int = MIN_ITERATIONS,
) -> AdaRoundResult:
    """Learned rounding of `weight` on the grid (scale, zero_point, [qmin, qmax]), all shaped
    like `weight`. `forward(w, x)` computes the layer (and any activation after it) and must
    match `target` given `inputs`; each step uses `batch_size` random rows of them.
    With `time_limit` (seconds) the first iterations are timed and the count set to what fits
    (within [min_iterations, iterations]); `deadline` (time.monotonic) stops it regardless."""
    start = time.monotonic()
    weight, scale, zero = weight.detach().float(), scale.detach(), zero_point.detach()
    floor = torch.floor(weight / scale)
    v = torch.nn.Parameter(_initial_v(weight / scale - floor))
    optimizer = torch.optim.Adam([v], lr=lr)

    def dequantize(h: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(floor + h + zero, qmin, qmax) - zero) * scale

    nearest = torch.clamp(torch.round(weight / scale) + zero, qmin, qmax)
    before = _full_loss(forward, (nearest - zero) * scale, inputs, target, channel_dim)
    evaluation = time.monotonic() - start  # the final evaluation costs as much again
    total, done = iterations, 0
    with torch.enable_grad():
        while done < total:
            done += 1
            index = torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),),
                                  generator=generator)
            loss = _loss(rectified_sigmoid(v), dequantize, forward, inputs[index],
                         target[index], channel_dim, regularization,
                         (done / total - WARMUP) / (1 - WARMUP))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time_limit is not None and done == PROBE_ITERATIONS:
                per_iteration = (time.monotonic() - start - evaluation) / done
                total = max(done, fit_iterations(per_iteration, time_limit - 2 * evaluation,
                                                 ceiling=iterations, floor=min_iterations))
            if deadline is not None and time.monotonic() > deadline:
                break
    with torch.no_grad():
        q = torch.clamp(floor + (rectified_sigmoid(v) >= 0.5).float() + zero, qmin, qmax)
        after = _full_loss(forward, (q - zero) * scale, inputs, target, channel_dim)
    if after > before:  # a budget cut too short can leave it worse: keep nearest then
        q, after = nearest, before
    return AdaRoundResult(q=q, loss_nearest=before, loss=after, iterations=done)


def _loss(h: torch.Tensor, dequantize: Callable[[torch.Tensor], torch.Tensor],
          forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
          target: torch.Tensor, channel_dim: int, regularization: float, progress: float
          ) -> torch.Tensor:
    """Output error plus, after the warm-up (progress > 0), the term that pushes h to 0 or 1
    with its exponent annealed from 20 to 2."""
    loss = reconstruction_loss(forward(dequantize(h), inputs), target, channel_dim)
    if progress > 0:
        beta = 20 + (2 - 20) * progress
        loss = loss + regularization * (1 - (2 * h - 1).abs().pow(beta)).sum()
    return loss


@torch.no_grad()
def _full_loss(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w: torch.Tensor,
               inputs: torch.Tensor, target: torch.Tensor, channel_dim: int,
               chunk: int = 4096) -> float:
    total = 0.0
    for start in range(0, inputs.shape[0], chunk):
        out = forward(w, inputs[start:start + chunk])
        total += float(reconstruction_loss(out, target[start:start + chunk], channel_dim)) * \
            out.shape[0]
    return total / max(inputs.shape[0], 1) if not math.isnan(total) else float("inf")
