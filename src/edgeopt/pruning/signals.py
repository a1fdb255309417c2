"""What data-driven criteria read: gradients and input activation norms, gathered over batches.

Analysis only: the model's weights are never changed (gradients are cleared afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeopt.data import iter_batches
from edgeopt.pruning.common import labeled_batches, loss_fn
from edgeopt.pruning.importance import NEEDS, Signals


def gather(criterion: str, model: nn.Module, weights: dict[str, nn.Parameter], data: Any, *,
           batches: int, batch_size: int) -> dict[str, Signals]:
    """What `criterion` reads per weight tensor, as its NEEDS entry says (nothing for
    magnitude / random, or for needs a structure-specific scorer measures)."""
    need = NEEDS.get(criterion)
    if need == "gradients":
        return collect_gradients(model, data, weights, batches=batches, batch_size=batch_size)
    if need == "input_norms":
        layers = {name.rpartition(".")[0]: model.get_submodule(name.rpartition(".")[0])
                  for name in weights}
        norms = collect_input_norms(model, data, layers, batches=batches, batch_size=batch_size)
        return {name: Signals(input_norm=norms.get(name.rpartition(".")[0])) for name in weights}
    return {}


def collect_gradients(
    model: nn.Module, data: Any, params: dict[str, nn.Parameter], *, batches: int,
    batch_size: int,
) -> dict[str, Signals]:
    """Sum of dL/dw and of |dL/dw| for `params` over up to `batches` labeled batches.

    The model runs in eval mode (batch-norm statistics untouched); other parameters' gradients
    are not kept."""
    was_training = model.training
    model.eval()
    wanted = set(map(id, params.values()))
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    out = {name: Signals(grad_sum=torch.zeros_like(p), grad_abs_sum=torch.zeros_like(p))
           for name, p in params.items()}
    seen = 0
    try:
        for inputs, targets in labeled_batches(data, batches, batch_size, "data"):
            model.zero_grad(set_to_none=True)
            loss_fn(model(inputs), targets, inputs).backward()
            for name, p in params.items():
                if p.grad is not None:
                    out[name].grad_sum += p.grad.detach()
                    out[name].grad_abs_sum += p.grad.detach().abs()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    for signals in out.values():
        signals.batches = seen
    return out


@torch.no_grad()
def collect_input_norms(
    model: nn.Module, data: Any, layers: dict[str, nn.Module], *, batches: int, batch_size: int,
) -> dict[str, torch.Tensor]:
    """L2 norm of each layer's input per input channel (dim 1, or the last dim for Linear)."""
    sums: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(_norm_hook(name, module, sums))
               for name, module in layers.items()]
    was_training = model.training
    model.eval()
    try:
        _forward_batches(model, data, batches, batch_size)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: total.sqrt() for name, total in sums.items()}


def _forward_batches(model: nn.Module, data: Any, batches: int, batch_size: int) -> None:
    """Run the first `batches` batches of `data` through `model` (for hooks and BN statistics)."""
    for index, (inputs, _) in enumerate(iter_batches(data, batch_size=batch_size)):
        if index >= batches:
            break
        model(inputs)


def _norm_hook(name: str, module: nn.Module, sums: dict[str, torch.Tensor]) -> Callable[..., None]:
    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().to(torch.float64)
        channel = x.dim() - 1 if isinstance(module, nn.Linear) else 1
        squares = x.pow(2).movedim(channel, 0).reshape(x.shape[channel], -1).sum(dim=1)
        sums[name] = sums.get(name, 0) + squares

    return hook


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: Any, *, batches: int, batch_size: int) -> int:
    """Re-estimate batch-norm running statistics on `batches` of `data` (the rest of the model
    stays in eval mode); returns the number of norms updated. Pruning shifts activations, and
    stale statistics alone can drop a pruned network to chance accuracy."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or data is None or batches < 1:
        return 0
    saved = [(m, m.momentum, m.training, _running_stats(m)) for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    handles = [m.register_forward_pre_hook(_estimate_only_from_several_values) for m in norms]
    try:
        _forward_batches(model, data, batches, batch_size)
    finally:
        for handle in handles:
            handle.remove()
        for m, momentum, training, stats in saved:
            m.momentum, m.training = momentum, training
            if int(m.num_batches_tracked) == 0:  # never saw a usable batch: keep the old ones
                for name, value in stats.items():
                    getattr(m, name).copy_(value)
        model.train(was_training)
    return len(norms)


def _running_stats(norm: nn.Module) -> dict[str, torch.Tensor]:
    return {name: getattr(norm, name).clone()
            for name in ("running_mean", "running_var", "num_batches_tracked")}


def _estimate_only_from_several_values(norm: nn.Module, inputs: tuple[Any, ...]) -> None:
    """A batch with one value per channel (one example on a 1x1 map) has no variance to
    estimate, and batch norm refuses it in training mode: that batch leaves the statistics."""
    x = inputs[0]
    norm.training = x.numel() > x.shape[1]


class MovementTracker:
    """Accumulates -w * dL/dw after every optimizer step (an `after_step` hook for fit)."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.scores = {name: torch.zeros_like(p) for name, p in params.items()}

    def __call__(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is not None and p.grad.shape == p.shape:
                    self.scores[name] -= p.detach() * p.grad.detach()

    def signals(self) -> dict[str, Signals]:
        return {name: Signals(movement=score.clone()) for name, score in self.scores.items()}
