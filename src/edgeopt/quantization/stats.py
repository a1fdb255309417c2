"""What quantization did, per layer, for the run summary and the report."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn

from edgeopt.quantization.primitives import sqnr_db


@dataclasses.dataclass
class QuantStats:
    method: str
    folded_batch_norms: int = 0
    quantized_layers: list[str] = dataclasses.field(default_factory=list)
    float_layers: list[str] = dataclasses.field(default_factory=list)
    activation_quantizers: int = 0
    calibration_samples: int = 0
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    sensitivity: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # what each advanced method did, model-wide (equalization, data_free, mixed_precision, ...)
    methods: dict[str, Any] = dataclasses.field(default_factory=dict)
    # per-layer values from those methods, merged into `layers` by finish()
    notes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def finish(self, gm: nn.Module) -> None:
        from edgeopt.quantization.modules import WEIGHT_LAYERS, ActQuant, DynamicActQuant

        for row in self.layers:
            row.update(self.notes.pop(row["name"], {}))
        for name, values in self.notes.items():  # layers left in float by a method's choice
            self.layers.append({"name": name, **values})
        self.notes = {}
        self.quantized_layers = [row["name"] for row in self.layers if "weight_bits" in row
                                 or "format" in row]
        self.float_layers = [n for n, m in gm.named_modules() if type(m) in WEIGHT_LAYERS]
        self.activation_quantizers = sum(
            isinstance(m, ActQuant | DynamicActQuant) for m in gm.modules())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def layer_stats(name: str, layer: nn.Module, quantizer: nn.Module | None) -> dict[str, Any]:
    """Scales, zero points and the weight quantization error of one layer."""
    weight = layer.weight()
    float_weight = layer.__dict__.pop("reference_weight", None)
    row: dict[str, Any] = {
        "name": name,
        "type": getattr(layer, "float_type", type(layer).__name__),
        "weight_bits": layer.spec.bits,
        "granularity": layer.spec.granularity.value,
        "weight_scale_min": float(layer.weight_scale.min()),
        "weight_scale_max": float(layer.weight_scale.max()),
        "stored_bytes": math.ceil(weight.numel() * layer.spec.bits / 8)
        + 4 * layer.weight_scale.numel(),
    }
    if layer.spec.levels.value != "uniform":
        row["levels"] = layer.spec.levels.value
    if float_weight is not None:
        error = (weight - float_weight.reshape(weight.shape)).flatten()
        row["weight_sqnr_db"] = sqnr_db(float_weight.reshape(weight.shape), weight)
        counts, edges = torch.histogram(error.float(), bins=30)
        row["weight_error_hist"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    if quantizer is not None and hasattr(quantizer, "scale"):
        row["input_scale"] = float(quantizer.scale)
        row["input_zero_point"] = int(quantizer.zero_point)
        row.update(getattr(quantizer, "calibration_stats", {}))
    return row


@torch.no_grad()
def activation_stats(model: nn.Module, inputs: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per frozen activation quantizer, on `inputs`: the rounding error a_q - a as a histogram,
    the share of values the integer range clips (saturation) and that share per channel."""
    from edgeopt.quantization.modules import ActQuant

    rows: dict[str, dict[str, Any]] = {}

    def record(name: str) -> Any:
        def hook(module: ActQuant, args: tuple[Any, ...], out: torch.Tensor) -> None:
            rows[name] = _activation_row(module, args[0], out)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
               if isinstance(m, ActQuant) and m.frozen]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _activation_row(quantizer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    scale, zero_point, qmin, qmax = quantizer.qparams()
    levels = torch.round(x.double() / scale) + zero_point
    clipped = (levels < qmin) | (levels > qmax)
    counts, edges = torch.histogram((out - x).flatten().float(), bins=30)
    row = {"act_error_hist": {"edges": edges.tolist(), "counts": counts.tolist()},
           "saturation": float(clipped.double().mean())}
    if x.dim() >= 2:  # channels on dim 1 (conv maps, or features of a flat batch)
        per_channel = clipped.transpose(0, 1).reshape(x.shape[1], -1).double().mean(dim=1)
        row["channel_saturation"] = per_channel.tolist()
    return row


@torch.no_grad()
def simulated_layer_stats(name: str, layer: nn.Module) -> dict[str, Any]:
    """Float-format and codebook layers: their format or levels, stored size and weight error."""
    weight = layer.weight()
    float_weight = layer.__dict__.pop("reference_weight", None)
    row: dict[str, Any] = {"name": name, "type": layer.float_type,
                           "stored_bytes": int(layer.stored_bytes())}
    if hasattr(layer, "format"):
        row["format"] = layer.format.value
        row["input_format"] = layer.input_format.value if layer.input_format else "float32"
        row["artifact"] = ("float32 ONNX: the exporter folds the weight cast into a float32 "
                           "constant; input casts stay as Cast pairs so ONNX Runtime computes "
                           "what the simulation does")
    else:
        row["levels"] = layer.levels
        row["weight_bits"] = layer.bits
        row["codebook_entries"] = int(layer.codebook.numel())
        row["artifact"] = "float32 ONNX (codes are expanded to float weights at export)"
    if float_weight is not None:
        row["weight_sqnr_db"] = sqnr_db(float_weight.reshape(weight.shape), weight)
    return row
