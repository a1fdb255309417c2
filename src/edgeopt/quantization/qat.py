"""Quantization-aware training: fake-quantized forward passes, STE and learned (LSQ) scales.

Checkpoints after every epoch with `edgeopt.checkpoint` (the recipe runner's per-stage folder, or
`QuantConfig.checkpoint_dir` from Python) and resumes from the last finished epoch when started
again from the same model and settings.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.fx as fx

from edgeopt import checkpoint
from edgeopt.quantization.config import QuantConfig
from edgeopt.quantization.modules import ActQuant, QATWeightLayer
from edgeopt.quantization.stats import QuantStats


def train_qat(gm: fx.GraphModule, config: QuantConfig, data: Any, stats: QuantStats) -> None:
    """Train `gm` in place for config.epochs; quantizer scales learn alongside the weights."""
    for quantizer in gm.modules():
        if isinstance(quantizer, ActQuant):
            quantizer.start_learning()
    folder = (contextlib.nullcontext() if config.checkpoint_dir is None
              else checkpoint.checkpoints(config.checkpoint_dir))
    with folder:
        _train_epochs(gm, config, data, stats)
    gm.eval()
    for quantizer in gm.modules():
        if isinstance(quantizer, ActQuant):
            quantizer.stop_learning()


def _train_epochs(gm: fx.GraphModule, config: QuantConfig, data: Any, stats: QuantStats) -> None:
    """One `fit` epoch at a time (each restarts the learning rate), checkpointed after each."""
    from edgeopt.training import fit

    ckpt = checkpoint.loop("qat", {"model": gm}, {"epochs": config.epochs, "lr": config.lr})
    saved = None if ckpt is None else ckpt.restore({"model": gm}, None)
    stats.curves = {"train_loss": [], "weight_quant_mse": []} if saved is None else saved["curves"]
    for epoch in range(0 if saved is None else saved["epoch"], config.epochs):
        with checkpoint.checkpoints(None):  # this loop's checkpoint covers the epoch's fit
            history = fit(gm, data, epochs=1, lr=config.lr, seed=epoch,
                          desc=f"QAT epoch {epoch + 1}/{config.epochs}")
        stats.curves["train_loss"].extend(history.train_loss)
        stats.curves["weight_quant_mse"].append(weight_quant_mse(gm))
        if ckpt is not None:
            ckpt.save({"model": gm}, None, {"epoch": epoch + 1, "curves": stats.curves})


@torch.no_grad()
def weight_quant_mse(gm: fx.GraphModule) -> float:
    """Mean squared difference between float and fake-quantized weights over QAT layers."""
    errors = [float(((layer.fake_weight() - layer.weight * layer.mask) ** 2).mean())
              for layer in gm.modules() if isinstance(layer, QATWeightLayer)]
    return sum(errors) / max(len(errors), 1)
