"""A layer's calibration data as rows, and the forward passes that collect them.

A row is one (sample, output position) of a layer: the input patch its weight multiplies and
the float model's output there. Keeping a few random positions per sample makes one step of a
layer's optimization cost the same at 28x28 and 224x224. The partly quantized model runs once
over the samples, stopping before each layer so it can be refined before it runs (later layers
then see its refined output); the float model is run up to each layer for its targets.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from edgeopt.quantization.gptq import patches
from edgeopt.quantization.modules import GroupedLinear

LIVE_ACTIVATIONS = 6  # activations of the largest size held at once in a forward pass


@dataclasses.dataclass(frozen=True)
class LayerRows:
    inputs: torch.Tensor  # [rows, in * k...]: what the weight multiplies, input quantized
    target: torch.Tensor  # [rows, out]: the float model's output of the layer at those rows
    per_sample: int  # rows kept per sample


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one timed forward pass tells about the layers (per sample)."""

    positions: dict[str, int]  # output positions per sample, per layer
    capture_seconds: list[float]  # per layer: its float targets and its quantized input
    pass_bytes: int  # memory of a forward pass, per sample


def channel_dim(layer: nn.Module) -> int:
    return -1 if getattr(layer, "float_type", "Linear") == "Linear" else 1


def pick(samples: int, positions: int, per_sample: int, generator: torch.Generator
         ) -> torch.Tensor:
    """Flat indices (sample * positions + position) of `per_sample` random positions per
    sample (every position when there are no more than that)."""
    if per_sample >= positions:
        return torch.arange(samples * positions)
    keep = torch.rand(samples, positions, generator=generator).argsort(dim=1)[:, :per_sample]
    return (keep + torch.arange(samples).unsqueeze(1) * positions).flatten()


@torch.no_grad()
def input_rows(layer: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rows of the layer's input `x` that produce its output at flat `index`."""
    if getattr(layer, "input_quantizer", None) is not None:
        x = layer.input_quantizer(x)
    if channel_dim(layer) == -1:
        return x.reshape(-1, x.shape[-1])[index]
    return patches(x, layer.weight_q.shape, layer._hyperparameters, index)


@torch.no_grad()
def layer_rows(layer: nn.Module, x: torch.Tensor, target: torch.Tensor, per_sample: int,
               generator: torch.Generator) -> LayerRows:
    """Rows at `per_sample` random output positions of every sample, from the layer's input
    `x` and the float model's output `target` of the same samples."""
    y = target.movedim(1, -1) if channel_dim(layer) == 1 else target  # channels last
    y = y.reshape(y.shape[0], -1, y.shape[-1])  # [samples, positions, out]
    index = pick(y.shape[0], y.shape[1], per_sample, generator)
    return LayerRows(input_rows(layer, x, index), y.reshape(-1, y.shape[-1])[index],
                     min(per_sample, y.shape[1]))


def rows_forward(layer: nn.Module, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The layer's output [rows, out] for input rows, with weight `w` (in the layer's storage
    layout) instead of its own; any conv groups."""
    if isinstance(layer, GroupedLinear):
        y, bias = rows @ w, layer.bias
    elif layer.float_type == "Linear":
        y, bias = rows @ w.t(), layer.bias()
    else:
        groups, bias = layer._hyperparameters["groups"], layer.bias()
        y = torch.einsum("rgk,gok->rgo", rows.reshape(rows.shape[0], groups, -1),
                         w.reshape(groups, w.shape[0] // groups, -1)).flatten(1)
    return y if bias is None else y + bias


@torch.no_grad()
def visit_layers(model: nn.Module, names: list[str], x: torch.Tensor,
                 visit: Callable[[int, str, torch.Tensor], None]) -> None:
    """One forward pass of `model` over `x` that calls visit(index, name, input) just before
    each named layer first runs; what visit changes in the layer is what then runs."""
    seen: set[str] = set()

    def hook(index: int, name: str) -> Callable[..., None]:
        def before(module: nn.Module, args: tuple) -> None:
            if name not in seen:
                seen.add(name)
                visit(index, name, args[0])
        return before

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(i, n))
               for i, n in enumerate(names)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def probe(gm: nn.Module, float_model: nn.Module, layers: list[str], x: torch.Tensor) -> Probe:
    """Time one forward pass of each model over `x`, layer by layer: a layer's capture costs
    the float model up to its output and the quantized model from the layer before to it."""
    positions: dict[str, int] = {}
    reached = {(kind, n): 0.0 for kind in ("float", "quantized") for n in layers}
    largest = [x[0].numel()]

    def hook(kind: str, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
            reached[kind, name] = time.monotonic() - start
            if out is not None:
                positions[name] = out.numel() // max(out.shape[0] * out.shape[
                    channel_dim(gm.get_submodule(name))], 1)
                largest.append(out[0].numel())
        return record

    handles = [float_model.get_submodule(n).register_forward_hook(hook("float", n))
               for n in layers]
    handles += [gm.get_submodule(n).register_forward_pre_hook(hook("quantized", n))
                for n in layers]
    try:
        for model in (float_model, gm, float_model, gm):  # the first of each pays one-off
            start = time.monotonic()                       # costs (kernels for this shape)
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    floats = list(itertools.accumulate((reached["float", n] for n in layers), max))
    quantized = list(itertools.accumulate((reached["quantized", n] for n in layers), max))
    steps = [b - a for a, b in zip([0.0, *quantized], quantized)]
    n = max(x.shape[0], 1)
    return Probe(positions, [(f + q) / n for f, q in zip(floats, steps)],
                 4 * LIVE_ACTIVATIONS * max(largest))
