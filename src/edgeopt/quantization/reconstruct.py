"""Layer by layer, in execution order: learned rounding (AdaRound, GPTQ) and bias correction.

Each layer sees its input as the partly quantized model produces it (earlier layers already
refined) and is compared with the float model's output of the same layer on the same samples.
Inputs and outputs are captured with forward hooks that stop the forward pass at the layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from tqdm.auto import tqdm

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.adaround import adaround, reconstruction_loss
from edgeopt.quantization.bias_correction import (
    analytical_bias_shift,
    empirical_bias_shift,
    layer_kind,
)
from edgeopt.quantization.config import BiasCorrection, QuantConfig, Rounding
from edgeopt.quantization.gptq import gptq, hessian, im2col
from edgeopt.quantization.modules import GroupedLinear, QuantizedWeightLayer

REFINABLE = (QuantizedWeightLayer, GroupedLinear)


class _Stop(Exception):
    pass


@torch.no_grad()
def capture(model: nn.Module, name: str, batches: list[torch.Tensor], *, output: bool = False
            ) -> torch.Tensor | None:
    """The input (or output) of submodule `name` over all batches; None if it never runs."""
    got: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got.append((out if output else args[0]).detach())
        raise _Stop

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        for batch in batches:
            try:
                model(batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(got) if got else None


def bias_correction_mode(config: QuantConfig) -> BiasCorrection:
    mode = config.advanced.bias_correction
    if mode is BiasCorrection.AUTO:
        return BiasCorrection.ANALYTICAL if config.data_free else BiasCorrection.EMPIRICAL
    return mode


def channel_dim(layer: nn.Module) -> int:
    return -1 if getattr(layer, "float_type", "Linear") == "Linear" else 1


def _forward_with(layer: nn.Module, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer's output with weight `w` (in the layer's storage layout) instead of its own."""
    if getattr(layer, "input_quantizer", None) is not None:
        x = layer.input_quantizer(x)
    if isinstance(layer, GroupedLinear):
        y = torch.matmul(x, w)
        return y + layer.bias if layer.bias is not None else y
    return layer._functional(x, w, layer.bias(), **layer._hyperparameters)


def _activation_after(float_model: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ReLU-like op applied to this layer's output, if the graph shows one (else identity)."""
    if isinstance(float_model, fx.GraphModule):
        for node in float_model.graph.nodes:
            if node.op == "call_module" and str(node.target) == name and len(node.users) == 1:
                user = next(iter(node.users))
                module = qgraph._module(float_model, user)
                if module is not None and qgraph.is_relu(float_model, user):
                    return module
                if qgraph.is_relu6(float_model, user):
                    return torch.nn.functional.relu6
                if qgraph.is_relu(float_model, user):
                    return torch.relu
    return lambda y: y


def _float_weight(float_model: nn.Module, name: str, layer: nn.Module) -> torch.Tensor:
    weight = float_model.get_submodule(name).weight.detach().float()
    return weight.t().contiguous() if isinstance(layer, GroupedLinear) else weight


def refine_weights(gm: nn.Module, float_model: nn.Module, names: list[str], config: QuantConfig,
                   batches: list[torch.Tensor], input_means: dict[str, torch.Tensor],
                   notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Learned rounding and/or bias correction of every refinable layer, in order."""
    learned = config.rounding in (Rounding.ADAROUND, Rounding.GPTQ)
    mode = bias_correction_mode(config) if config.bias_correction else None
    layers = [n for n in names if isinstance(gm.get_submodule(n), REFINABLE)]
    budget = config.advanced.time_budget_s
    deadline = time.monotonic() + budget if budget else None
    generator = torch.Generator().manual_seed(config.advanced.seed)
    refined, corrected = 0, 0
    desc = " + ".join(([config.rounding.value] if learned else [])
                      + ([f"{mode.value} bias correction"] if mode else []))
    for index, name in enumerate(tqdm(layers, desc=desc, unit="layer", leave=False)):
        layer, note = gm.get_submodule(name), notes.setdefault(name, {})
        needs_input = learned or mode is BiasCorrection.EMPIRICAL
        x = capture(gm, name, batches) if needs_input else None
        target = capture(float_model, name, batches, output=True) if needs_input else None
        if learned and x is not None and (deadline is None or time.monotonic() < deadline):
            share = None if deadline is None else time.monotonic() + (
                deadline - time.monotonic()) / (len(layers) - index)
            if _learn_rounding(layer, float_model, name, x, target, config, share, generator,
                               note):
                refined += 1
        if mode is not None and _correct_bias(layer, float_model, name, x, target, mode,
                                              input_means, note):
            corrected += 1
    return {"layers": len(layers), "rounding_refined": refined, "bias_corrected": corrected,
            "time_budget_s": budget, "bias_correction": mode.value if mode else None}


def _learn_rounding(layer: nn.Module, float_model: nn.Module, name: str, x: torch.Tensor,
                    target: torch.Tensor, config: QuantConfig, deadline: float | None,
                    generator: torch.Generator, note: dict[str, Any]) -> bool:
    scale, zero, qmin, qmax = layer.integer_grid()
    weight = _float_weight(float_model, name, layer).reshape(scale.shape)
    act = _activation_after(float_model, name)
    dim = channel_dim(layer)
    adv = config.advanced
    if config.rounding is Rounding.ADAROUND:
        result = adaround(weight, scale, zero, qmin, qmax,
                          lambda w, inputs: act(_forward_with(layer, w, inputs)), x, act(target),
                          iterations=adv.adaround_iterations, lr=adv.adaround_lr,
                          regularization=adv.adaround_regularization,
                          batch_size=adv.adaround_batch_size, channel_dim=dim,
                          generator=generator, deadline=deadline)
        layer.set_integer_weight(result.q)
        note.update(adaround_loss_nearest=result.loss_nearest, adaround_loss=result.loss,
                    adaround_iterations=result.iterations)
        return True
    q = _gptq_layer(layer, weight, scale, zero, qmin, qmax, x, config)
    if q is None:
        note["gptq"] = "skipped: grouped convolution"
        return False
    before = _output_loss(layer, layer.weight_q.float(), zero, scale, x, target, dim)
    after = _output_loss(layer, q, zero, scale, x, target, dim)
    if after <= before:
        layer.set_integer_weight(q)
    note.update(gptq_loss_nearest=before, gptq_loss=min(before, after))
    return True


@torch.no_grad()
def _output_loss(layer: nn.Module, q: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor,
                 x: torch.Tensor, target: torch.Tensor, dim: int) -> float:
    w = (q.reshape(scale.shape) - zero) * scale
    return float(reconstruction_loss(_forward_with(layer, w, x), target, dim))


@torch.no_grad()
def _gptq_layer(layer: nn.Module, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                qmin: int, qmax: int, x: torch.Tensor, config: QuantConfig) -> torch.Tensor | None:
    kind = layer_kind(layer)
    if kind in ("depthwise", "grouped"):
        return None
    if getattr(layer, "input_quantizer", None) is not None:
        x = layer.input_quantizer(x)
    transpose = isinstance(layer, GroupedLinear)
    w2d = weight.t() if transpose else weight.reshape(weight.shape[0], -1)
    columns = w2d.shape[1]
    h = torch.zeros(columns, columns, dtype=torch.float64)
    rows = 0
    for chunk in x.split(64):
        flat = (chunk.reshape(-1, columns) if kind == "linear"
                else im2col(chunk, weight.shape, layer._hyperparameters))
        h += hessian(flat) * flat.shape[0]
        rows += flat.shape[0]
    h /= max(rows, 1)

    def two_d(t: torch.Tensor) -> torch.Tensor:
        return t.t() if transpose else t.reshape(t.shape[0], -1)

    q = gptq(w2d, h, two_d(scale), two_d(zero), qmin, qmax,
             block_size=config.advanced.gptq_block_size, damping=config.advanced.gptq_damping)
    return q.t().contiguous() if transpose else q.reshape(weight.shape)


@torch.no_grad()
def _correct_bias(layer: nn.Module, float_model: nn.Module, name: str, x: torch.Tensor | None,
                  target: torch.Tensor | None, mode: BiasCorrection,
                  input_means: dict[str, torch.Tensor], note: dict[str, Any]) -> bool:
    if mode is BiasCorrection.EMPIRICAL:
        if x is None or target is None:
            return False
        shift = empirical_bias_shift(target, layer(x), channel_dim(layer))
    else:
        mean = input_means.get(name)
        if mean is None or isinstance(layer, GroupedLinear):
            return False
        float_weight = float_model.get_submodule(name).weight.detach().float()
        shift = analytical_bias_shift(float_weight, layer.weight(), mean, layer_kind(layer))
    bias = layer.bias() if callable(layer.bias) else layer.bias
    bias = torch.zeros_like(shift) if bias is None else bias
    layer.set_float_bias(bias + shift)
    note.update(bias_correction_max=float(shift.abs().max()),
                bias_correction_mean=float(shift.abs().mean()))
    return True
