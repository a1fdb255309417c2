"""Data-free calibration (ZeroQ-style): synthesize inputs whose activations match the model's
batch-norm statistics, then calibrate on them as on real data.

Every BatchNorm layer remembers the mean and variance of its input over the training data
(running_mean, running_var). Starting from noise, the inputs are optimized so that, at every
batch-norm layer, the batch's per-channel mean and standard deviation match those statistics.
A model without batch norm carries no such statistics, so there is nothing to match.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from edgeopt.errors import ModelError
from edgeopt.progress import bar as progress_bar

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclasses.dataclass(frozen=True)
class Synthesis:
    inputs: torch.Tensor
    loss_start: float  # batch-norm statistics mismatch of the initial noise
    loss_end: float
    batch_norms: int


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats
            and m.running_mean is not None]


def require_batch_norm(model: nn.Module) -> None:
    if not batch_norm_layers(model):
        raise ModelError(
            f"data_free=True cannot work on {type(model).__name__}: it has no BatchNorm layer, "
            "and batch-norm running statistics are the only record of the training data a "
            "model keeps, so there is nothing to synthesize inputs from. Pass data=... "
            "(a few hundred unlabeled samples suffice)."
        )


def batch_norm_mismatch(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """|| batch mean - running mean || + || batch std - running std || of one BN's input."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims)
    std = torch.sqrt(x.var(dim=dims, unbiased=False) + bn.eps)
    return (torch.linalg.vector_norm(mean - bn.running_mean)
            + torch.linalg.vector_norm(std - torch.sqrt(bn.running_var + bn.eps)))


def statistics_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The summed batch-norm mismatch over every BN layer, for inputs `x`."""
    losses: list[torch.Tensor] = []
    hooks = [bn.register_forward_pre_hook(
        lambda module, args: losses.append(batch_norm_mismatch(args[0], module)))
        for bn in batch_norm_layers(model)]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(losses).sum()


def synthesize_inputs(model: nn.Module, input_shape: tuple[int, ...], *, samples: int = 256,
                      steps: int = 300, lr: float = 0.1, seed: int = 0, batch_size: int = 64,
                      progress: bool = True) -> Synthesis:
    """Inputs [samples, *input_shape] optimized (Adam) to match the BN statistics of `model`."""
    require_batch_norm(model)
    model = copy.deepcopy(model).eval()  # the caller's model keeps its requires_grad flags
    generator = torch.Generator().manual_seed(seed)
    chunks, start_loss, end_loss = [], 0.0, 0.0
    for params in model.parameters():
        params.requires_grad_(False)
    bar = progress_bar(total=steps * ((samples + batch_size - 1) // batch_size),
                       desc="data-free inputs", unit="step", disable=not progress, leave=False)
    for first in range(0, samples, batch_size):
        n = min(batch_size, samples - first)
        x = torch.randn(n, *input_shape, generator=generator).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        with torch.enable_grad():
            for step in range(steps):
                loss = statistics_loss(model, x)
                if step == 0:
                    start_loss += float(loss.detach()) * n / samples
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
        with torch.no_grad():
            end_loss += float(statistics_loss(model, x)) * n / samples
        chunks.append(x.detach())
    bar.close()
    return Synthesis(torch.cat(chunks), start_loss, end_loss, len(batch_norm_layers(model)))
