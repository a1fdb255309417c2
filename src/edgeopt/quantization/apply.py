"""The quantization handler: validate, (synthesize data), trace, fold, plan mixed precision,
equalize / rescale, place quantizers, calibrate, train, refine rounding and biases, freeze."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.progress import bar as progress_bar
from edgeopt.quantization import advanced, smoothing
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.bias_correction import input_means
from edgeopt.quantization.config import (
    Granularity,
    Levels,
    Method,
    QuantConfig,
    QuantSpec,
    Rounding,
)
from edgeopt.quantization.embedding import quantize_embeddings
from edgeopt.quantization.modules import (
    ActQuant,
    GroupedLinear,
    QATWeightLayer,
    QuantizedWeightLayer,
)
from edgeopt.quantization.observers import make_observer
from edgeopt.quantization.primitives import spec_range
from edgeopt.quantization.reconstruct import refine_weights
from edgeopt.quantization.simulated import CodebookLayer, FloatFormatLayer
from edgeopt.quantization.stats import (
    QuantStats,
    activation_stats,
    layer_stats,
    simulated_layer_stats,
)
from edgeopt.quantization.weights import LayerBuilder, runs_on_integers, spec_for
from edgeopt.registry import Applied, register

_STATIC = (Method.PTQ, Method.QAT)
_LEARNED = (Rounding.ADAROUND, Rounding.GPTQ)


def check_supported(config: QuantConfig) -> None:
    """Refuse, before any work, the options (and combinations) this version cannot honour."""
    acts, method = config.activations, config.method
    specs = {"weights": config.weights} | {f"weight_overrides[{k!r}]": v
                                           for k, v in config.weight_overrides.items()}
    unsupported = [
        ("rounding", method is Method.QAT and config.rounding in _LEARNED, config.rounding.value,
         "'nearest' or 'stochastic' with method='qat' (QAT learns its rounding by training)"),
    ]
    for where, spec in specs.items():
        unsupported += _spec_problems(where, spec, config)
    float_acts = acts is not None and acts.dtype.is_float
    unsupported += [
        ("activations.bits", method in _STATIC and acts is not None and not float_acts
         and acts.bits != 8, acts.bits if acts else None,
         "8 (the runtime's integer kernels take 8-bit inputs)"),
        ("activations.dtype", float_acts and not all(s.dtype.is_float for s in specs.values()),
         acts.dtype.value if acts else None,
         "'int', or a float format for the weights too (float-format layers round their inputs)"),
        ("data_free", config.data_free and method is Method.QAT, True,
         "False with method='qat' (training needs real data)"),
        ("mixed_precision", config.mixed_precision is not None and method in (
            Method.QAT, Method.DYNAMIC), "MixedPrecision(...)",
         "None with method='qat' or 'dynamic' (use 'ptq' or 'weight_only')"),
        ("smoothquant", config.smoothquant and method is Method.WEIGHT_ONLY, True,
         "False with method='weight_only' (it eases activation quantization; there is none)"),
        ("awq", config.awq and (method is Method.QAT or config.smoothquant), True,
         "False with method='qat' or smoothquant=True (both rescale the same channels)"),
    ]
    for field, bad, got, valid in unsupported:
        if bad:
            raise ConfigError(
                f"QuantConfig.{field}={got!r} is not supported in this version; use {valid}."
            )


def _spec_problems(where: str, spec: QuantSpec, config: QuantConfig) -> list[tuple]:
    method = config.method
    nonuniform = spec.levels is not Levels.UNIFORM
    return [
        (f"{where}.bits", not spec.dtype.is_float and spec.bits > 8, spec.bits,
         "2..8 (or dtype='fp16' / 'bf16' for 16-bit weights)"),
        (f"{where}.granularity", method is not Method.WEIGHT_ONLY
         and spec.granularity is Granularity.PER_GROUP, "per_group",
         "'per_channel' or 'per_tensor' (per_group is for method='weight_only')"),
        (f"{where}.dtype", spec.dtype.is_float and method in (Method.QAT, Method.DYNAMIC),
         spec.dtype.value, "'int' with method='qat' or 'dynamic' (float formats are simulated "
         "post-training: use method='ptq' or 'weight_only')"),
        (f"{where}.levels", nonuniform and (method is Method.QAT or config.rounding is not
                                            Rounding.NEAREST or spec.granularity is
                                            Granularity.PER_GROUP), spec.levels.value,
         "'uniform' with method='qat', per-group weights or rounding other than 'nearest'"),
    ]


def check_finite_weights(model: nn.Module) -> None:
    for name, param in model.state_dict().items():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise ModelError(f"model weight {name!r} contains NaN or inf; fix the model first.")


@register(QuantConfig, check=check_supported)
def quantize_model(model: nn.Module, config: QuantConfig, *, data: Any = None) -> Applied:
    check_supported(config)
    config = advanced.resolve_auto(config, data)
    advanced.check_data(config, data)
    check_finite_weights(model)
    batches, synthesis = advanced.calibration_inputs(model, config, data)
    gm = _graph(model, config, batches)
    bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    folded = qgraph.fold_batch_norm(gm, bn_stats) if isinstance(gm, fx.GraphModule) else 0
    stats = QuantStats(method=config.method.value, folded_batch_norms=folded)
    if synthesis is not None:
        stats.methods["data_free"] = synthesis
    if config.mixed_precision is not None:
        names = weight_layers(gm, config.exclude)
        config = advanced.plan_mixed_precision(model, gm, names, config, data, batches, stats)
    names = weight_layers(gm, config.exclude)
    _check_groups(gm, names, config)
    advanced.prepare_float(gm, names, config, batches, bn_stats, stats)
    means = input_means(gm, names, bn_stats) if isinstance(gm, fx.GraphModule) else {}
    reference = copy.deepcopy(gm) if config.rounding in _LEARNED or config.bias_correction \
        else None
    inputs_of: dict[str, str] = {}  # weight layer -> the quantizer that feeds it
    if config.method in _STATIC:
        inputs_of = _quantize_static(gm, names, config, batches, data, stats)
    else:
        _swap_weight_layers(gm, names, config)
    if reference is not None:
        stats.methods["refinement"] = refine_weights(gm, reference, names, config, batches,
                                                     means, stats.notes)
    # measured on a few calibration samples: the simulated forward can be slow on big inputs
    act_rows = activation_stats(gm, batches[0][:8]) if inputs_of else {}
    _finish_layers(gm, names, inputs_of, stats, act_rows)
    quantize_embeddings(gm, config, stats)
    stats.finish(gm)
    if config.sensitivity:
        from edgeopt.quantization.analysis import layer_sensitivity

        single = dataclasses.replace(config, data_free=False, mixed_precision=None)
        real = data is not None and not config.data_free  # else data only gave the shape
        rows = layer_sensitivity(model, single, data if real else batches)
        stats.sensitivity = [row.to_dict() for row in rows]
    return Applied(gm, {"quant": stats})


def _graph(model: nn.Module, config: QuantConfig, batches: list[torch.Tensor]) -> nn.Module:
    if config.method in _STATIC:
        return qgraph.trace(copy.deepcopy(model).eval(), batches[0][:2])
    needs_graph = config.equalization or config.smoothquant or config.awq
    if not needs_graph and batches and smoothing.auto_wanted(config, batches):
        try:  # a graph only serves outlier smoothing here: without one, quantize as is
            return qgraph.trace(copy.deepcopy(model).eval(), batches[0][:2])
        except ModelError:
            return copy.deepcopy(model).eval()
    return _graph_if_traceable(model, batches[0][:2] if needs_graph and batches else None)


def _graph_if_traceable(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """Weight-only and dynamic quantization need no graph, but fold BN when one is at hand."""
    copied = copy.deepcopy(model).eval()
    try:
        return qgraph.trace(copied, example)
    except ModelError:
        if example is not None:
            raise
        return copied


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


def _replace(gm: fx.GraphModule, name: str, new: nn.Module) -> None:
    qgraph._replace_submodule(gm, name, new)


def _quantize_static(gm: fx.GraphModule, names: list[str], config: QuantConfig,
                     batches: list[torch.Tensor], data: Any, stats: QuantStats
                     ) -> dict[str, str]:
    spec = config.activations
    assert spec is not None  # QuantConfig.validate requires it for static methods
    qmin, qmax = spec_range(spec, is_weight=False)

    def make_quantizer() -> ActQuant:
        observer = make_observer(config.calibration.value, percentile=config.percentile,
                                 qmin=qmin, qmax=qmax)
        return ActQuant(spec, observer)

    integer = {n for n in names if runs_on_integers(spec_for(n, gm.get_submodule(n), config))}
    inputs_of = qgraph.insert_act_quantizers(gm, make_quantizer, integer) if integer else {}
    _swap_weight_layers(gm, names, config)
    stats.calibration_samples = calibrate(gm, batches, config.calibration_samples)
    freeze_activations(gm)
    if config.method is Method.QAT:
        from edgeopt.quantization.qat import train_qat

        train_qat(gm, config, data, stats)
        for name in names:
            layer = gm.get_submodule(name)
            if isinstance(layer, QATWeightLayer):
                _replace(gm, name, layer.to_quantized())
    return inputs_of


def _swap_weight_layers(model: nn.Module, names: list[str], config: QuantConfig) -> None:
    """Replace each float layer by its quantized (or simulated) version, in place."""
    dynamic = config.method is Method.DYNAMIC
    if dynamic and not any(isinstance(model.get_submodule(n), nn.Linear) for n in names):
        raise ModelError("method='dynamic' quantizes Linear layers and the model has none; "
                         "use method='ptq' for convolutional models.")
    builder = LayerBuilder(config)
    for name in names:
        float_layer = model.get_submodule(name)
        spec = spec_for(name, float_layer, config)
        if (dynamic or spec.granularity is Granularity.PER_GROUP) and not isinstance(
                float_layer, nn.Linear):
            continue  # run-time input quantization and groups are for Linear layers
        layer = builder.build(float_layer, spec)
        qgraph._replace_submodule(model, name, layer)
    if isinstance(model, fx.GraphModule):
        model.recompile()


def _finish_layers(model: nn.Module, names: list[str], inputs_of: dict[str, str],
                   stats: QuantStats, act_rows: dict[str, dict[str, Any]]) -> None:
    """Store biases as int32 in the accumulator's scale and record each layer's statistics."""
    quantizers = {n: m for n, m in model.named_modules() if isinstance(m, ActQuant)}
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, FloatFormatLayer | CodebookLayer):
            stats.layers.append(simulated_layer_stats(name, layer))
            continue
        if not isinstance(layer, QuantizedWeightLayer | GroupedLinear):
            continue
        quantizer = quantizers.get(inputs_of.get(name, ""))
        if quantizer is not None and isinstance(layer, QuantizedWeightLayer):
            layer.quantize_bias(quantizer.scale)
        stats.layers.append({**layer_stats(name, layer, quantizer),
                             **act_rows.get(inputs_of.get(name, ""), {})})
    if isinstance(model, fx.GraphModule):  # simulate the runtime's fused kernels exactly
        qgraph.attach_fused_kernels(model)


@torch.no_grad()
def calibrate(gm: fx.GraphModule, batches: list[torch.Tensor], limit: int) -> int:
    """Run calibration batches through the observers; return the number of samples seen."""
    seen = 0
    for inputs in progress_bar(batches, desc="calibrate", unit="batch", leave=False):
        inputs = inputs[: max(0, limit - seen)]
        try:
            gm(inputs)
        except RuntimeError as exc:
            raise DataError(
                f"calibration data of shape {tuple(inputs.shape)} does not fit the model: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        seen += inputs.shape[0]
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
