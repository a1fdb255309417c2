"""Quantization-aware training: fake-quantized forward passes, STE and learned (LSQ) scales.

Checkpoints after every epoch (safetensors) when `QuantConfig.checkpoint_dir` is set, and
resumes from the last finished epoch when started again with the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from safetensors.torch import load_file, save

from edgeopt import distributed
from edgeopt.atomic import write_bytes, write_text
from edgeopt.quantization.config import QuantConfig
from edgeopt.quantization.modules import ActQuant, QATWeightLayer
from edgeopt.quantization.stats import QuantStats


def train_qat(gm: fx.GraphModule, config: QuantConfig, data: Any, stats: QuantStats) -> None:
    """Train `gm` in place for config.epochs; quantizer scales learn alongside the weights."""
    from edgeopt.training import fit

    for quantizer in gm.modules():
        if isinstance(quantizer, ActQuant):
            quantizer.start_learning()
    stats.curves = {"train_loss": [], "weight_quant_mse": []}
    start = _resume(gm, config, stats.curves)
    for epoch in range(start, config.epochs):
        history = fit(gm, data, epochs=1, lr=config.lr, seed=epoch,
                      desc=f"QAT epoch {epoch + 1}/{config.epochs}")
        stats.curves["train_loss"].extend(history.train_loss)
        stats.curves["weight_quant_mse"].append(weight_quant_mse(gm))
        _checkpoint(gm, config, epoch + 1, stats.curves)
    gm.eval()
    for quantizer in gm.modules():
        if isinstance(quantizer, ActQuant):
            quantizer.stop_learning()


@torch.no_grad()
def weight_quant_mse(gm: fx.GraphModule) -> float:
    """Mean squared difference between float and fake-quantized weights over QAT layers."""
    errors = [float(((layer.fake_weight() - layer.weight * layer.mask) ** 2).mean())
              for layer in gm.modules() if isinstance(layer, QATWeightLayer)]
    return sum(errors) / max(len(errors), 1)


def _paths(config: QuantConfig) -> tuple[Path, Path] | None:
    if config.checkpoint_dir is None:
        return None
    folder = Path(config.checkpoint_dir)
    return folder / "qat.safetensors", folder / "qat.json"


def _checkpoint(gm: fx.GraphModule, config: QuantConfig, epochs_done: int,
                curves: dict[str, list[float]]) -> None:
    paths = _paths(config)
    if paths is None or not distributed.is_main():  # under torchrun, rank 0 writes
        return
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in gm.state_dict().items()}
    write_bytes(paths[0], save(state))
    write_text(paths[1], json.dumps({"epochs_done": epochs_done, "epochs": config.epochs,
                                     "curves": curves}))


def _resume(gm: fx.GraphModule, config: QuantConfig, curves: dict[str, list[float]]) -> int:
    """Load the last checkpoint if one exists; return the number of epochs already done."""
    paths = _paths(config)
    if paths is None or not paths[0].exists() or not paths[1].exists():
        return 0
    info = json.loads(paths[1].read_text())
    gm.load_state_dict(load_file(str(paths[0])), strict=True)
    for key, values in info.get("curves", {}).items():
        curves[key] = list(values)
    return min(int(info["epochs_done"]), config.epochs)
