"""Embedding tables stored as integers: one scale per row (token), gathered with the rows.

A transformer's word embedding is often the largest tensor of the model (MiniLM: 30522 x 384,
half of its weights), and a gather reads only the rows it needs, so an int8 table costs no
speed. The exported graph is Gather(int8 table) -> Cast -> Mul by Gather(per-row scales)
(minus Gather(zero points) for asymmetric tables): plain ONNX that any runtime runs, computing
exactly what the PyTorch module computes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeopt.profile.layers import register_macs
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.config import Granularity, Levels, QuantConfig, QuantSpec
from edgeopt.quantization.primitives import (
    choose_qparams,
    quantize,
    spec_range,
    sqnr_db,
    weight_minmax,
)
from edgeopt.quantization.stats import QuantStats


def embedding_spec(name: str, layer: nn.Embedding, config: QuantConfig) -> QuantSpec | None:
    """The spec of an embedding table, or None to keep it in float.

    A weight override matching the table (by name or "Embedding") is used as given; otherwise
    the table gets 8 bits with one scale per row (per tensor if the weights are per tensor), the
    width the file stores it in: no integer kernel reads it, so fewer bits would only lose
    accuracy. Float formats and codebooks are simulated for matrix products only: float table.
    """
    spec = next((s for p, s in config.weight_overrides.items() if qgraph.matches(name, layer, p)),
                None)
    if spec is None:
        per_tensor = config.weights.granularity is Granularity.PER_TENSOR
        spec = QuantSpec(bits=8, symmetric=config.weights.symmetric,
                         granularity=Granularity.PER_TENSOR if per_tensor
                         else Granularity.PER_CHANNEL)
    if spec.dtype.is_float or spec.levels is not Levels.UNIFORM or spec.bits > 8:
        return None
    if spec.granularity is Granularity.PER_GROUP:  # rows are gathered whole: one scale per row
        return dataclasses.replace(spec, granularity=Granularity.PER_CHANNEL, group_size=None)
    return spec


class QuantizedEmbedding(nn.Module):
    """An nn.Embedding whose table is stored as 8-bit integers with per-row (or one) scale."""

    def __init__(self, layer: nn.Embedding, spec: QuantSpec) -> None:
        super().__init__()
        self.float_type = "Embedding"
        self.spec = spec
        self.padding_idx = layer.padding_idx
        weight = layer.weight.detach().float()
        qmin, qmax = spec_range(spec, is_weight=True)
        low, high = weight_minmax(weight, spec.granularity)
        scale, zero = choose_qparams(low, high, qmin, qmax, symmetric=spec.symmetric,
                                     power_of_two=spec.power_of_two_scale)
        dtype = torch.int8 if qmin < 0 else torch.uint8
        self.register_buffer("weight_q", quantize(weight, scale, zero, qmin, qmax).to(dtype))
        rows = (-1, 1) if scale.dim() else ()
        self.register_buffer("weight_scale", scale.reshape(rows).float())
        has_zero = bool(zero.any())
        self.register_buffer("weight_zero_point",
                             zero.reshape(rows).float() if has_zero else None)
        self.reference_weight = weight  # read (and dropped) by the statistics

    def _rows(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, table) if table.dim() else table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        values = F.embedding(ids, self.weight_q).to(torch.float32)
        if self.weight_zero_point is not None:
            values = values - self._rows(self.weight_zero_point, ids)
        return values * self._rows(self.weight_scale, ids)

    def weight(self) -> torch.Tensor:
        """The dequantized table (statistics and tests; forward gathers rows first)."""
        zero = self.weight_zero_point if self.weight_zero_point is not None else 0.0
        return (self.weight_q.float() - zero) * self.weight_scale

    def stored_parameters(self) -> list[torch.Tensor]:
        return [t for t in (self.weight_q, self.weight_scale, self.weight_zero_point)
                if t is not None]

    def extra_repr(self) -> str:
        return f"{tuple(self.weight_q.shape)} {self.weight_q.dtype}, {self.spec.granularity.value}"


@register_macs(QuantizedEmbedding)
def _embedding_macs(layer: QuantizedEmbedding, inputs: tuple, output: torch.Tensor) -> int:
    return 0  # a gather and one multiply per value: no multiply-accumulate


def embedding_layers(model: nn.Module, exclude: tuple[str, ...]) -> list[str]:
    """Names of the plain nn.Embedding tables to quantize (subclasses may compute more)."""
    return [name for name, module in model.named_modules() if type(module) is nn.Embedding
            and not any(qgraph.matches(name, module, p) for p in exclude)]


def quantize_embeddings(model: nn.Module, config: QuantConfig, stats: QuantStats) -> list[str]:
    """Replace every embedding table by its integer version, in place; return their names.

    Tables that keep a float copy for a reason (max_norm renormalizes rows in place, a float
    format or codebook spec) stay as they are, with the reason in the statistics.
    """
    done = []
    for name in embedding_layers(model, config.exclude):
        layer = model.get_submodule(name)
        spec = embedding_spec(name, layer, config)
        if spec is None or layer.max_norm is not None:
            why = "max_norm renormalizes rows" if spec is not None else "float/codebook spec"
            stats.notes.setdefault(name, {})["embedding_kept_float"] = why
            continue
        quantized = QuantizedEmbedding(layer, spec)
        qgraph._replace_submodule(model, name, quantized)
        stats.layers.append(embedding_stats(name, quantized))
        done.append(name)
    if done and hasattr(model, "recompile"):
        model.recompile()
    return done


@torch.no_grad()
def embedding_stats(name: str, layer: QuantizedEmbedding) -> dict[str, Any]:
    """The statistics row of one table, in the shape of the weight layers' rows."""
    reference = layer.__dict__.pop("reference_weight", None)
    table = layer.weight()
    row: dict[str, Any] = {
        "name": name, "type": "Embedding", "weight_bits": layer.spec.bits,
        "granularity": layer.spec.granularity.value,
        "weight_scale_min": float(layer.weight_scale.min()),
        "weight_scale_max": float(layer.weight_scale.max()),
        "stored_bytes": math.ceil(table.numel() * layer.spec.bits / 8)
        + 4 * layer.weight_scale.numel(),
    }
    if reference is not None:
        row["weight_sqnr_db"] = sqnr_db(reference, table)
    return row
