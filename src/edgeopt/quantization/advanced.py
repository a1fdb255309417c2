"""The advanced post-training steps the handler runs around the core flow.

Before quantization, on the float graph: data-free input synthesis, mixed-precision planning,
cross-layer equalization (+ bias absorption) and SmoothQuant. After: learned rounding and bias
correction (see reconstruct.py). Each records what it did in the QuantStats.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.data import collect_labeled, take_inputs
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.quantization import mixed, smoothing
from edgeopt.quantization.awq import apply_awq
from edgeopt.quantization.config import BiasCorrection, Method, QuantConfig, Rounding
from edgeopt.quantization.datafree import require_batch_norm, synthesize_inputs
from edgeopt.quantization.equalization import absorb_biases, equalize
from edgeopt.quantization.modules import WEIGHT_LAYERS
from edgeopt.quantization.reconstruct import bias_correction_mode, capture
from edgeopt.quantization.smoothquant import linear_groups, smooth
from edgeopt.quantization.stats import QuantStats
from edgeopt.quantization.weights import spec_for


def data_driven(config: QuantConfig) -> list[str]:
    """The options that need calibration inputs (real or synthesized)."""
    needs = []
    if config.method in (Method.PTQ, Method.QAT):
        needs.append(f"method={config.method.value!r}")
    if config.rounding in (Rounding.ADAROUND, Rounding.GPTQ):
        needs.append(f"rounding={config.rounding.value!r}")
    if config.bias_correction and bias_correction_mode(config).value == "empirical":
        needs.append("empirical bias_correction")
    if config.smoothquant or config.awq:
        needs.append("smoothquant" if config.smoothquant else "awq")
    if config.mixed_precision is not None:
        needs.append("mixed_precision")
    return needs


def resolve_auto(config: QuantConfig, data: Any) -> QuantConfig:
    """bias_correction='auto': empirical with real data, analytical (from batch-norm statistics)
    when there is none or the calibration inputs are synthesized."""
    if config.advanced.bias_correction is not BiasCorrection.AUTO:
        return config
    mode = (BiasCorrection.EMPIRICAL if data is not None and not config.data_free
            else BiasCorrection.ANALYTICAL)
    return dataclasses.replace(config, advanced=dataclasses.replace(config.advanced,
                                                                    bias_correction=mode))


def check_data(config: QuantConfig, data: Any) -> None:
    """Refuse data-driven options without data, pointing at the data-free option."""
    needs = data_driven(config)
    if data is not None or config.data_free or not needs:
        return
    if config.method is Method.QAT:
        raise DataError("method='qat' needs training data; pass data=... (or use method="
                        "'dynamic' / 'weight_only', which need none).")
    raise DataError(
        f"{', '.join(needs)} needs calibration data; pass data=..., or set data_free=True to "
        "synthesize calibration inputs from the model's batch-norm statistics (or use "
        "method='dynamic' / 'weight_only' with rounding='nearest', which need none)."
    )


def input_shape(model: nn.Module, config: QuantConfig, data: Any) -> tuple[tuple[int, ...], str]:
    """Per-sample input shape for data-free synthesis, and where it came from: `data` (an
    example input tensor with its batch dimension, or any data), the config, or the model."""
    if data is not None:
        return tuple(take_inputs(data, 1, what="data")[0].shape[1:]), "data"
    if config.advanced.input_shape is not None:
        return tuple(config.advanced.input_shape), "QuantConfig.advanced.input_shape"
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple | list) and all(isinstance(d, int) for d in shape):
        return tuple(shape), f"{type(model).__name__}.input_shape"
    first = next((m for m in model.modules() if type(m) in WEIGHT_LAYERS), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,), "the model's first Linear layer"
    raise ConfigError(
        "QuantConfig.data_free=True needs the shape of one input and got neither data nor "
        "advanced.input_shape; pass data=an example input with its batch dimension (a tensor "
        "such as torch.randn(1, 3, 224, 224)), or set QuantConfig(advanced=AdvancedQuantConfig("
        "input_shape=(channels, height, width)))."
    )


@torch.no_grad()
def check_input_shape(model: nn.Module, shape: tuple[int, ...], source: str) -> None:
    """Run the model once on zeros of `shape` so a wrong shape fails before the synthesis."""
    try:
        copy.deepcopy(model).eval()(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise DataError(
            f"data_free=True: the input shape {shape} (per sample, from {source}) does not fit "
            f"the model: {str(exc).splitlines()[0]}. Give an example input with its batch "
            "dimension, e.g. data=torch.randn(1, *shape_of_one_sample)."
        ) from exc


def calibration_inputs(model: nn.Module, config: QuantConfig, data: Any
                       ) -> tuple[list[torch.Tensor], dict[str, Any] | None]:
    """Real calibration batches, or synthesized ones (data_free: `data`, if given, only tells
    the input shape); [] when none are needed."""
    if config.data_free:
        require_batch_norm(model)
        if not data_driven(config):
            return [], None
        adv = config.advanced
        shape, source = input_shape(model, config, data)
        check_input_shape(model, shape, source)
        synthesis = synthesize_inputs(model, shape, samples=min(adv.data_free_samples,
                                                                 config.calibration_samples),
                                      steps=adv.data_free_steps, lr=adv.data_free_lr,
                                      seed=adv.seed)
        info = {"samples": int(synthesis.inputs.shape[0]), "input_shape": list(shape),
                "input_shape_from": source, "batch_norms": synthesis.batch_norms,
                "bn_mismatch_start": synthesis.loss_start, "bn_mismatch_end": synthesis.loss_end}
        return list(synthesis.inputs.split(64)), info
    if data is None or not (data_driven(config) or smoothing.auto_wanted(config, data)):
        return [], None
    return take_inputs(data, config.calibration_samples, what="calibration data"), None


def prepare_float(gm: nn.Module, names: list[str], config: QuantConfig,
                  batches: list[torch.Tensor], bn_stats: dict, stats: QuantStats) -> None:
    """Function-preserving float transforms: equalization, bias absorption, SmoothQuant."""
    needs_graph = config.equalization or config.smoothquant or config.awq
    if needs_graph and not isinstance(gm, fx.GraphModule):
        raise ModelError(f"equalization, smoothquant and awq rewrite the model's graph, and "
                         f"{type(gm).__name__} could not be traced; pass data=... so it can be "
                         "captured with torch.export.")
    if config.equalization:
        _equalize(gm, names, config, bn_stats, stats, batches)
    if config.awq:
        notes = apply_awq(gm, names, lambda name: capture(gm, name, batches),
                          lambda name, layer: spec_for(name, layer, config))
        _note(stats, notes)
        stats.methods["awq"] = {"layers": len(notes),
                                "folded": sum(v["awq_folded"] for v in notes.values())}
    if config.smoothquant:
        leaders = [str(nodes[0].target) for nodes in linear_groups(gm, names).values()]
        found = smoothing.input_stats(gm, leaders, batches)  # any sequence lengths
        absmax = {name: seen.absmax for name, seen in found.items()}
        notes = smooth(gm, names, absmax, config.advanced.smoothquant_alpha)
        _note(stats, notes)
        stats.methods["smoothquant"] = {"alpha": config.advanced.smoothquant_alpha,
                                        "layers": len(notes),
                                        "folded": sum(v["smoothquant_folded"]
                                                      for v in notes.values())}
    elif smoothing.auto_wanted(config, batches or None) and isinstance(gm, fx.GraphModule):
        notes, summary = smoothing.smooth_outliers(gm, names, config, batches)
        if notes:  # nothing to report for models without token-sequence outliers
            _note(stats, notes)
            stats.methods["smoothquant"] = summary


def _note(stats: QuantStats, notes: dict[str, dict[str, Any]]) -> None:
    for name, values in notes.items():
        stats.notes.setdefault(name, {}).update(values)


def _equalize(gm: fx.GraphModule, names: list[str], config: QuantConfig, bn_stats: dict,
              stats: QuantStats, batches: list[torch.Tensor]) -> None:
    adv = config.advanced
    pairs, scales, sweeps = equalize(gm, names, adv.equalization_iterations, bn_stats,
                                     adv.relu6_to_relu, batches)
    absorbed = absorb_biases(gm, pairs, bn_stats) if adv.bias_absorption else {}
    for name, s in scales.items():
        stats.notes.setdefault(name, {}).update(
            equalization_scale_min=float(s.min()), equalization_scale_max=float(s.max()))
    for name, amount in absorbed.items():
        stats.notes[name]["absorbed_bias_max"] = amount
    stats.methods["equalization"] = {"pairs": [[p.first, p.second] for p in pairs],
                                     "sweeps": sweeps, "bias_absorbed_layers": len(absorbed)}


def plan_mixed_precision(model: nn.Module, gm: nn.Module, names: list[str], config: QuantConfig,
                         data: Any, batches: list[torch.Tensor], stats: QuantStats
                         ) -> QuantConfig:
    """Choose widths per layer; return the config with them as overrides (see mixed.py)."""
    plan = config.mixed_precision
    assert plan is not None
    candidates = tuple(sorted(set(plan.candidates)))

    def size_of(assignment: mixed.Assignment) -> int:
        return mixed.model_bytes(gm, names, assignment)

    if plan.size_budget_bytes is not None:  # before the sensitivity pass: it costs time
        mixed.choose_by_size([dict.fromkeys(names, candidates[0])], size_of,
                             plan.size_budget_bytes)
    inputs = torch.cat(batches)[: min(256, config.calibration_samples)]
    sensitivity = mixed.weight_sensitivity(gm, names, config.weights, candidates, inputs)
    sizes = {n: {b: mixed.layer_bytes(gm.get_submodule(n).weight, b) for b in candidates}
             for n in names}
    evaluated: list[dict[str, Any]] = []
    path: list[mixed.Assignment] = []
    if plan.size_budget_bytes is not None:
        fixed = size_of(dict.fromkeys(names, candidates[0])) - sum(
            sizes[n][candidates[0]] for n in names)  # bytes outside the quantized weights
        chosen = mixed.best_under_budget(sensitivity, sizes, plan.size_budget_bytes - fixed)
        assert chosen is not None  # the minimum was checked above
        chosen = mixed.fill_budget(chosen, sensitivity, sizes, candidates,
                                   plan.size_budget_bytes - size_of(chosen))
    else:
        path = mixed.downgrade_path(sensitivity, sizes, candidates)
        real = None if config.data_free else data  # data_free: data only gave the shape
        drop_of = _accuracy_drop(model, config, real, batches)
        index, evaluated = mixed.choose_by_accuracy(path, drop_of, float(plan.accuracy_budget))
        chosen = path[index]
    uniform = {b: size_of(dict.fromkeys(names, b)) for b in candidates}
    info = mixed.summary(plan, chosen, size_of(chosen), uniform, sensitivity)
    info["evaluated"] = [dict(e, size_bytes=size_of(path[e["step"]])) for e in evaluated]
    info["path_steps"] = len(path)  # accuracy budget: assignments searched
    stats.methods["mixed_precision"] = info
    for name, bits in chosen.items():
        stats.notes.setdefault(name, {})["mixed_precision_bits"] = bits
    return mixed.apply_assignment(config, chosen)


def _accuracy_drop(model: nn.Module, config: QuantConfig, data: Any,
                   batches: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    """drop(assignment): points of top-1 accuracy lost on the calibration data (labels when the
    data has them, else agreement with the float model), quantizing with nearest rounding."""
    from edgeopt.api import apply

    inputs, labels = _labelled(data, batches, config.calibration_samples)
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(inputs).argmax(-1)
    truth = labels if labels is not None else reference
    base = float((reference == truth).float().mean())
    fast = dataclasses.replace(config, rounding=Rounding.NEAREST, data_free=False,
                               sensitivity=False, advanced=dataclasses.replace(
                                   config.advanced, bias_correction=bias_correction_mode(config)))

    def drop(assignment: mixed.Assignment) -> float:
        quantized = apply(model, mixed.apply_assignment(fast, assignment), data=batches)
        with torch.no_grad():
            predicted = quantized(inputs).argmax(-1)
        return 100.0 * (base - float((predicted == truth).float().mean()))

    return drop


def _labelled(data: Any, batches: list[torch.Tensor], limit: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if data is None:
        return torch.cat(batches)[:limit], None
    return collect_labeled(data, limit, what="calibration data")
