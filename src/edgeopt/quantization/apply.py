"""The quantization handler: validate, trace, fold, place quantizers, calibrate, freeze."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from tqdm.auto import tqdm

from edgeopt.data import take_inputs
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.config import Method, NumberFormat, QuantConfig, Rounding
from edgeopt.quantization.modules import ActQuant, QuantizedWeightLayer
from edgeopt.quantization.observers import make_observer
from edgeopt.quantization.primitives import spec_range
from edgeopt.registry import register


@dataclasses.dataclass
class QuantStats:
    """What quantization did, for the run summary and the report."""

    method: str
    folded_batch_norms: int
    quantized_layers: list[str]
    float_layers: list[str]
    activation_quantizers: int
    calibration_samples: int
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_supported(config: QuantConfig) -> None:
    """Refuse, before any work, the options this version cannot honour."""
    unsupported = [
        ("method", config.method is not Method.PTQ, config.method.value, "'ptq'"),
        ("rounding", config.rounding is not Rounding.NEAREST, config.rounding.value, "'nearest'"),
        ("weights.dtype", config.weights.dtype is not NumberFormat.INT, config.weights.dtype.value,
         "'int'"),
        ("weights.granularity", config.weights.group_size is not None,
         config.weights.granularity.value, "'per_channel' or 'per_tensor'"),
        ("weights.bits", config.weights.bits > 8, config.weights.bits, "2..8"),
        ("activations.bits", config.activations is not None and config.activations.bits != 8,
         config.activations.bits if config.activations else None, "8 (the runtime's int8 kernels)"),
        ("equalization", config.equalization, True, "False"),
        ("bias_correction", config.bias_correction, True, "False"),
        ("data_free", config.data_free, True, "False"),
    ]
    for field, bad, got, valid in unsupported:
        if bad:
            raise ConfigError(
                f"QuantConfig.{field}={got!r} is not supported in this version; use {valid}."
            )


def check_finite_weights(model: nn.Module) -> None:
    for name, param in model.state_dict().items():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise ModelError(f"model weight {name!r} contains NaN or inf; fix the model first.")


@register(QuantConfig)
def quantize_model(model: nn.Module, config: QuantConfig, *, data: Any = None) -> nn.Module:
    check_supported(config)
    if data is None:
        raise DataError("static quantization (method='ptq') needs calibration data; pass data=...")
    check_finite_weights(model)
    batches = take_inputs(data, config.calibration_samples, what="calibration data")
    gm = prepare(model, config)
    calibrate(gm, batches, config.calibration_samples)
    freeze(gm)
    return gm


def prepare(model: nn.Module, config: QuantConfig) -> fx.GraphModule:
    """A traced copy with BN folded, integer weight layers and observing activation quantizers."""
    gm = qgraph.trace(copy.deepcopy(model).eval())
    folded = qgraph.fold_batch_norm(gm)
    names = qgraph.weight_layer_names(gm, config.exclude)
    if not names:
        raise ModelError("the model has no Linear or Conv layer left to quantize "
                         f"(exclude={list(config.exclude)}).")
    spec = config.activations
    assert spec is not None  # checked by QuantConfig.validate for PTQ
    qmin, qmax = spec_range(spec, is_weight=False)

    def make_quantizer() -> ActQuant:
        observer = make_observer(config.calibration.value, percentile=config.percentile,
                                 qmin=qmin, qmax=qmax)
        return ActQuant(spec, observer)

    inputs_of = qgraph.insert_act_quantizers(gm, make_quantizer, set(names))
    for name in names:
        qgraph._replace_submodule(gm, name, QuantizedWeightLayer(gm.get_submodule(name),
                                                                  config.weights))
    all_layers = [n for n, m in gm.named_modules() if type(m) in qgraph.WEIGHT_LAYERS]
    gm.meta["edgeopt_quant"] = QuantStats(
        method=config.method.value, folded_batch_norms=folded, quantized_layers=names,
        float_layers=all_layers, activation_quantizers=0, calibration_samples=0)
    gm.meta["edgeopt_inputs_of"] = inputs_of
    return gm


@torch.no_grad()
def calibrate(gm: fx.GraphModule, batches: list[torch.Tensor], limit: int) -> int:
    """Run calibration batches through the observers; return the number of samples seen."""
    seen = 0
    for inputs in tqdm(batches, desc="calibrate", unit="batch", leave=False):
        inputs = inputs[: max(0, limit - seen)]
        try:
            gm(inputs)
        except RuntimeError as exc:
            raise DataError(
                f"calibration data of shape {tuple(inputs.shape)} does not fit the model: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        seen += inputs.shape[0]
    gm.meta["edgeopt_quant"].calibration_samples = seen
    return seen


@torch.no_grad()
def freeze(gm: fx.GraphModule) -> None:
    """Fix every quantizer's scale and zero point and store biases as int32."""
    stats: QuantStats = gm.meta["edgeopt_quant"]
    quantizers = {n: m for n, m in gm.named_modules() if isinstance(m, ActQuant)}
    unused = [n for n, m in quantizers.items() if not m.frozen and m.calls == 0]
    if unused:
        raise ModelError(f"activation quantizers {unused} saw no data during calibration.")
    for quantizer in quantizers.values():
        quantizer.freeze()
    for layer_name, input_name in gm.meta["edgeopt_inputs_of"].items():
        layer = gm.get_submodule(layer_name)
        layer.quantize_bias(quantizers[input_name].scale)
        stats.layers.append(_layer_stats(layer_name, layer, quantizers[input_name]))
    stats.activation_quantizers = len(quantizers)
    stats.float_layers = [n for n in stats.float_layers if n not in stats.quantized_layers]


def _layer_stats(name: str, layer: QuantizedWeightLayer, quantizer: ActQuant) -> dict[str, Any]:
    return {
        "name": name,
        "type": layer.float_type,
        "weight_bits": layer.spec.bits,
        "weight_scale_min": float(layer.weight_scale.min()),
        "weight_scale_max": float(layer.weight_scale.max()),
        "input_scale": float(quantizer.scale),
        "input_zero_point": int(quantizer.zero_point),
    }


def quant_stats(model: nn.Module) -> QuantStats | None:
    meta = getattr(model, "meta", None)
    return meta.get("edgeopt_quant") if isinstance(meta, dict) else None
