"""The quantization handler: validate, trace, fold, place quantizers, calibrate, train, freeze."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from tqdm.auto import tqdm

from edgeopt.data import take_inputs
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization import packing  # noqa: F401  (registers the int4 export pass)
from edgeopt.quantization.config import (
    Granularity,
    Method,
    NumberFormat,
    QuantConfig,
    QuantSpec,
    Rounding,
)
from edgeopt.quantization.modules import (
    ActQuant,
    DynamicActQuant,
    GroupedLinear,
    QATWeightLayer,
    QuantizedWeightLayer,
)
from edgeopt.quantization.observers import make_observer
from edgeopt.quantization.primitives import spec_range
from edgeopt.quantization.stats import QuantStats, layer_stats
from edgeopt.registry import register

_STATIC = (Method.PTQ, Method.QAT)


def check_supported(config: QuantConfig) -> None:
    """Refuse, before any work, the options this version cannot honour."""
    acts = config.activations
    specs = {"weights": config.weights} | {f"weight_overrides[{k!r}]": v
                                           for k, v in config.weight_overrides.items()}
    unsupported = [
        ("rounding", config.rounding is not Rounding.NEAREST, config.rounding.value, "'nearest'"),
    ]
    for where, spec in specs.items():
        unsupported += [
            (f"{where}.dtype", spec.dtype is not NumberFormat.INT, spec.dtype.value, "'int'"),
            (f"{where}.bits", spec.bits > 8, spec.bits, "2..8"),
            (f"{where}.granularity", config.method is not Method.WEIGHT_ONLY
             and spec.granularity is Granularity.PER_GROUP, "per_group",
             "'per_channel' or 'per_tensor' (per_group is for method='weight_only')"),
        ]
    unsupported += [
        ("activations.bits", config.method in _STATIC and acts is not None and acts.bits != 8,
         acts.bits if acts else None, "8 (the runtime's integer kernels take 8-bit inputs)"),
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
    if config.method in _STATIC and data is None:
        what = "training" if config.method is Method.QAT else "calibration"
        raise DataError(f"method={config.method.value!r} needs {what} data; pass data=... "
                        "(or use method='dynamic' / 'weight_only', which need none).")
    check_finite_weights(model)
    if config.method in _STATIC:
        batches = take_inputs(data, config.calibration_samples, what="calibration data")
        gm = qgraph.trace(copy.deepcopy(model).eval(), batches[0][:2])
    else:
        batches, gm = [], _graph_if_traceable(model)
    folded = qgraph.fold_batch_norm(gm) if isinstance(gm, fx.GraphModule) else 0
    names = weight_layers(gm, config.exclude)
    _check_groups(gm, names, config)
    stats = QuantStats(method=config.method.value, folded_batch_norms=folded)
    _meta(gm)["edgeopt_quant"] = stats
    if config.method in _STATIC:
        _quantize_static(gm, names, config, batches, data)
    else:
        _swap_weight_layers(gm, names, config)
    stats.finish(gm)
    if config.sensitivity:
        from edgeopt.quantization.analysis import layer_sensitivity

        stats.sensitivity = [row.to_dict() for row in layer_sensitivity(model, config, data)]
    return gm


def _graph_if_traceable(model: nn.Module) -> nn.Module:
    """Weight-only and dynamic quantization need no graph, but fold BN when one is at hand."""
    copied = copy.deepcopy(model).eval()
    try:
        return qgraph.trace(copied)
    except ModelError:
        return copied


def _meta(model: nn.Module) -> dict[str, Any]:
    if not isinstance(getattr(model, "meta", None), dict):
        model.meta = {}
    return model.meta


def weight_layers(model: nn.Module, exclude: tuple[str, ...]) -> list[str]:
    if isinstance(model, fx.GraphModule):
        return qgraph.weight_layer_names(model, exclude)
    return [n for n, m in model.named_modules() if type(m) in qgraph.WEIGHT_LAYERS
            and not any(qgraph.matches(n, m, p) for p in exclude)]


def _check_groups(gm: fx.GraphModule, names: list[str], config: QuantConfig) -> None:
    if not names:
        raise ModelError("the model has no Linear or Conv layer left to quantize "
                         f"(exclude={list(config.exclude)}).")
    for name in names:
        layer = gm.get_submodule(name)
        size = spec_for(name, layer, config).group_size
        if size is not None and isinstance(layer, nn.Linear) and layer.in_features % size:
            raise ConfigError(
                f"QuantSpec.group_size={size} does not divide the {layer.in_features} input "
                f"features of layer {name!r}; use a divisor of every Linear's input width."
            )


def spec_for(name: str, layer: nn.Module, config: QuantConfig) -> QuantSpec:
    """The weight spec of one layer: the first matching override, else config.weights."""
    for pattern, spec in config.weight_overrides.items():
        if qgraph.matches(name, layer, pattern):
            return spec
    return config.weights


def _replace(gm: fx.GraphModule, name: str, new: nn.Module) -> None:
    qgraph._replace_submodule(gm, name, new)


def _quantize_static(gm: fx.GraphModule, names: list[str], config: QuantConfig,
                     batches: list[torch.Tensor], data: Any) -> None:
    spec = config.activations
    assert spec is not None  # QuantConfig.validate requires it for static methods
    qmin, qmax = spec_range(spec, is_weight=False)

    def make_quantizer() -> ActQuant:
        observer = make_observer(config.calibration.value, percentile=config.percentile,
                                 qmin=qmin, qmax=qmax)
        return ActQuant(spec, observer)

    inputs_of = qgraph.insert_act_quantizers(gm, make_quantizer, set(names))
    layer_type = QATWeightLayer if config.method is Method.QAT else QuantizedWeightLayer
    for name in names:
        layer = gm.get_submodule(name)
        _replace(gm, name, layer_type(layer, spec_for(name, layer, config)))
    calibrate(gm, batches, config.calibration_samples)
    quantizers = freeze_activations(gm)
    if config.method is Method.QAT:
        from edgeopt.quantization.qat import train_qat

        train_qat(gm, config, data)
    for layer_name, input_name in inputs_of.items():
        layer = gm.get_submodule(layer_name)
        if isinstance(layer, QATWeightLayer):
            layer = layer.to_quantized()
            _replace(gm, layer_name, layer)
        layer.quantize_bias(quantizers[input_name].scale)
        gm.meta["edgeopt_quant"].layers.append(
            layer_stats(layer_name, layer, quantizers[input_name]))


def _swap_weight_layers(model: nn.Module, names: list[str], config: QuantConfig) -> None:
    """Dynamic and weight-only: swap layers in place of the float ones (no graph needed)."""
    dynamic = config.method is Method.DYNAMIC
    if dynamic and not any(isinstance(model.get_submodule(n), nn.Linear) for n in names):
        raise ModelError("method='dynamic' quantizes Linear layers and the model has none; "
                         "use method='ptq' for convolutional models.")
    for name in names:
        float_layer = model.get_submodule(name)
        spec = spec_for(name, float_layer, config)
        if (dynamic or spec.granularity is Granularity.PER_GROUP) and not isinstance(
                float_layer, nn.Linear):
            continue  # run-time input quantization and groups are for Linear layers
        if spec.granularity is Granularity.PER_GROUP:
            layer: nn.Module = GroupedLinear(float_layer, spec)
        else:
            layer = QuantizedWeightLayer(float_layer, spec)
            if dynamic:
                layer.input_quantizer = DynamicActQuant()
        qgraph._replace_submodule(model, name, layer)
        _meta(model)["edgeopt_quant"].layers.append(layer_stats(name, layer, None))
    if isinstance(model, fx.GraphModule):
        model.recompile()


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
def freeze_activations(gm: fx.GraphModule) -> dict[str, ActQuant]:
    """Fix every activation quantizer's scale and zero point from what it observed."""
    quantizers = {n: m for n, m in gm.named_modules() if isinstance(m, ActQuant)}
    unused = [n for n, m in quantizers.items() if not m.frozen and m.calls == 0]
    if unused:
        raise ModelError(f"activation quantizers {unused} saw no data during calibration.")
    for quantizer in quantizers.values():
        quantizer.freeze()
    return quantizers


def quant_stats(model: nn.Module) -> QuantStats | None:
    meta = getattr(model, "meta", None)
    return meta.get("edgeopt_quant") if isinstance(meta, dict) else None
