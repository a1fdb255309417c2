"""Layer by layer, in execution order: learned rounding (AdaRound, GPTQ) and bias correction.

Each layer sees its input as the partly quantized model produces it (earlier layers already
refined: one forward pass stops before each layer and refines it before it runs) and is
compared with the float model's output of the same layer on the same samples, both kept as
rows (rows.py): `advanced.reconstruction_rows` (sample, output position) pairs per layer.
The whole refinement runs within `advanced.time_budget_s` (budget.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from edgeopt.progress import bar as progress_bar
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.adaround import adaround, reconstruction_loss
from edgeopt.quantization.bias_correction import (
    analytical_bias_shift,
    empirical_bias_shift,
    layer_kind,
)
from edgeopt.quantization.budget import (
    MIN_ITERATIONS,
    TimeBudget,
    pass_samples,
    reconstruction_samples,
    rows_per_sample,
)
from edgeopt.quantization.config import BiasCorrection, QuantConfig, Rounding
from edgeopt.quantization.gptq import gptq
from edgeopt.quantization.modules import GroupedLinear, QuantizedWeightLayer
from edgeopt.quantization.rows import (
    LayerRows,
    layer_rows,
    probe,
    rows_forward,
    visit_layers,
)

REFINABLE = (QuantizedWeightLayer, GroupedLinear)
LEARNED = (Rounding.ADAROUND, Rounding.GPTQ)
PROBE_SAMPLES = 8  # timed through both models to size the capture
FALLBACK = "nearest: time budget spent"


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


@dataclasses.dataclass
class _Plan:
    inputs: torch.Tensor  # the calibration samples refinement reconstructs from
    per_sample: dict[str, int]  # output positions kept per sample, per layer
    budget: TimeBudget
    clock: float = 0.0  # when the quantized pass last left a layer


def refine_weights(gm: nn.Module, float_model: nn.Module, names: list[str], config: QuantConfig,
                   batches: list[torch.Tensor], input_means: dict[str, torch.Tensor],
                   notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Learned rounding and/or bias correction of every refinable layer, in order, within
    `config.advanced.time_budget_s` (layers left without time keep nearest rounding)."""
    start = time.monotonic()
    learned = config.rounding in LEARNED
    mode = bias_correction_mode(config) if config.bias_correction else None
    layers = [n for n in names if isinstance(gm.get_submodule(n), REFINABLE)]
    needs_input = (learned or mode is BiasCorrection.EMPIRICAL) and bool(batches and layers)
    plan = _plan(gm, float_model, layers, config, batches, start) if needs_input else None
    generator = torch.Generator().manual_seed(config.advanced.seed)
    fell_back, corrected = [], []
    desc = " + ".join(([config.rounding.value] if learned else [])
                      + ([f"{mode.value} bias correction"] if mode else []))
    bar = progress_bar(total=len(layers), desc=desc, unit="layer", leave=False)

    def visit(index: int, name: str, x: torch.Tensor | None) -> None:
        note = notes.setdefault(name, {})
        fallback, bias = _refine_one(gm, float_model, name, index, x, plan, config, mode,
                                     generator, input_means, note)
        if fallback:
            fell_back.append(name)
        if bias:
            corrected.append(name)
        bar.update(1)
        if plan is not None:
            left = plan.budget.left()
            if left is not None:
                bar.set_postfix_str(f"{max(left, 0.0):.0f} s of budget left")
            plan.clock = time.monotonic()

    if plan is None:
        for index, name in enumerate(layers):
            visit(index, name, None)
    else:
        plan.clock = time.monotonic()
        visit_layers(gm, layers, plan.inputs, visit)
    bar.close()
    return _summary(layers, notes, config, plan, fell_back, len(corrected), mode, start)


def _refine_one(gm: nn.Module, float_model: nn.Module, name: str, index: int,
                x: torch.Tensor | None, plan: _Plan | None, config: QuantConfig,
                mode: BiasCorrection | None, generator: torch.Generator,
                input_means: dict[str, torch.Tensor], note: dict[str, Any]) -> tuple[bool, bool]:
    """One layer, given its input `x` over the plan's samples: its rows (when anything needs
    them), learned rounding if time is left, bias correction. Returns (fell back to nearest
    rounding, bias corrected)."""
    layer = gm.get_submodule(name)
    learned = plan is not None and config.rounding in LEARNED
    room = plan.budget.room(index) if plan is not None else None
    in_time = learned and (room is None or room > 0)  # room: once the captures are paid
    rows = None
    if plan is not None and x is not None and (in_time or mode is BiasCorrection.EMPIRICAL):
        rows = _timed_rows(float_model, layer, name, index, x, plan, generator)
    fell_back = False
    if learned and not in_time:
        note["rounding_fallback"] = FALLBACK
        fell_back = True
    elif learned and rows is not None:
        note["reconstruction_rows"] = int(rows.inputs.shape[0])
        fell_back = not _refine_layer(layer, float_model, name, rows, config, plan.budget,
                                      index, generator, note)
    corrected = mode is not None and _correct_bias(layer, float_model, name, rows, mode,
                                                   input_means, note)
    return fell_back, corrected


def _timed_rows(float_model: nn.Module, layer: nn.Module, name: str, index: int,
                x: torch.Tensor, plan: _Plan, generator: torch.Generator) -> LayerRows | None:
    """The layer's rows from as many samples as the budget affords now. The time it took
    (and the quantized pass's since the previous layer) corrects the estimate for the
    captures still to come."""
    samples = min(plan.budget.samples_now(index), x.shape[0])
    target = capture(float_model, name, list(plan.inputs[:samples].split(64)), output=True)
    rows = None if target is None else layer_rows(layer, x[:samples], target,
                                                  plan.per_sample[name], generator)
    plan.budget.observe_capture(index, time.monotonic() - plan.clock, samples)
    return rows


def _summary(layers: list[str], notes: dict[str, dict[str, Any]], config: QuantConfig,
             plan: _Plan | None, fell_back: list[str], corrected: int,
             mode: BiasCorrection | None, start: float) -> dict[str, Any]:
    """What the refinement did, for the statistics: per-layer iterations and fallbacks too."""
    key = f"{config.rounding.value}_iterations"
    iterations = {n: notes[n][key] for n in layers if key in notes.get(n, {})}
    refined = [n for n in layers if f"{config.rounding.value}_loss" in notes.get(n, {})]
    return {"layers": len(layers), "rounding_refined": len(refined),
            "bias_corrected": corrected, "time_budget_s": config.advanced.time_budget_s,
            "elapsed_s": round(time.monotonic() - start, 3),
            **(_capture_summary(plan.budget) if plan else {}),
            "iterations": iterations, "fell_back": fell_back,
            "bias_correction": mode.value if mode else None}


def _capture_summary(budget: TimeBudget) -> dict[str, Any]:
    spent, _ = budget.rates.get("capture", (0.0, 0.0))
    last = budget.samples_now(len(budget.costs) - 1)
    return {"samples": budget.samples, "samples_last_layer": last,
            "capture_planned_s_per_sample": round(sum(budget.capture_per_sample), 3),
            "capture_s": round(spent, 3), "capture_scale": round(budget.capture_scale(), 3)}


def _plan(gm: nn.Module, float_model: nn.Module, layers: list[str], config: QuantConfig,
          batches: list[torch.Tensor], start: float) -> _Plan:
    """Size the work to the budget and to memory: how many samples to capture, how many rows
    to keep per sample, and each layer's cost per iteration."""
    adv = config.advanced
    seen = probe(gm, float_model, layers, batches[0][:PROBE_SAMPLES])
    available = min(sum(int(b.shape[0]) for b in batches), pass_samples(seen.pass_bytes))
    samples = reconstruction_samples(available, sum(seen.capture_seconds), adv.time_budget_s)
    per_sample = {n: rows_per_sample(seen.positions.get(n, 1), samples,
                                     adv.reconstruction_rows) for n in layers}
    costs = [float(gm.get_submodule(n).weight_q.numel() * per_sample[n]) for n in layers]
    budget = TimeBudget(adv.time_budget_s, costs, seen.capture_seconds, samples, start=start)
    return _Plan(_first_samples(batches, samples), per_sample, budget)


def _first_samples(batches: list[torch.Tensor], samples: int) -> torch.Tensor:
    taken, seen = [], 0
    for batch in batches:
        if seen >= samples:
            break
        taken.append(batch[: samples - seen])
        seen += taken[-1].shape[0]
    return torch.cat(taken)


def _refine_layer(layer: nn.Module, float_model: nn.Module, name: str, rows: LayerRows,
                  config: QuantConfig, budget: TimeBudget, index: int,
                  generator: torch.Generator, note: dict[str, Any]) -> bool:
    """Learned rounding of one layer in its share of the budget. False: its estimated
    minimum (from the layers before) does not fit what is left, so it keeps nearest rounding."""
    kind = config.rounding.value
    units = _work_units(layer, rows, config.rounding)
    least = min(MIN_ITERATIONS, config.advanced.adaround_iterations) \
        if config.rounding is Rounding.ADAROUND else 1
    estimate, room = budget.estimate(kind, units, least), budget.room(index + 1)
    if room is not None and (room <= 0 or (estimate is not None and estimate > room)):
        note["rounding_fallback"] = FALLBACK
        return False
    start = time.monotonic()
    deadline = None if room is None else start + room  # keeps the later captures' time
    done = _learn_rounding(layer, float_model, name, rows, config, budget.share(index),
                           deadline, generator, note)
    budget.observe(kind, time.monotonic() - start, units * done)
    return True


def _work_units(layer: nn.Module, rows: LayerRows, rounding: Rounding) -> float:
    """Work per AdaRound iteration (weights x rows per sample), or per GPTQ pass (the
    Hessian and the column updates: columns^2 x (rows + outputs))."""
    if rounding is Rounding.ADAROUND:
        return float(layer.weight_q.numel() * rows.per_sample)
    columns = rows.inputs.shape[1]
    return float(columns * columns * (rows.inputs.shape[0] + rows.target.shape[1]))


def _learn_rounding(layer: nn.Module, float_model: nn.Module, name: str, rows: LayerRows,
                    config: QuantConfig, seconds: float | None, deadline: float | None,
                    generator: torch.Generator, note: dict[str, Any]) -> int:
    """AdaRound or GPTQ of one layer; returns the AdaRound iterations run (1 for GPTQ)."""
    scale, zero, qmin, qmax = layer.integer_grid()
    weight = _float_weight(float_model, name, layer).reshape(scale.shape)
    act = _activation_after(float_model, name)
    adv = config.advanced
    if config.rounding is Rounding.ADAROUND:
        result = adaround(weight, scale, zero, qmin, qmax,
                          lambda w, x: act(rows_forward(layer, w, x)), rows.inputs,
                          act(rows.target), iterations=adv.adaround_iterations,
                          lr=adv.adaround_lr, regularization=adv.adaround_regularization,
                          batch_size=adv.adaround_batch_size * rows.per_sample, channel_dim=-1,
                          generator=generator, deadline=deadline, time_limit=seconds)
        layer.set_integer_weight(result.q)
        note.update(adaround_loss_nearest=result.loss_nearest, adaround_loss=result.loss,
                    adaround_iterations=result.iterations)
        return result.iterations
    fit, held = holdout(rows)
    q = _gptq_layer(layer, weight, scale, zero, qmin, qmax, fit.inputs, config)
    if q is None:
        note["gptq"] = "skipped: grouped convolution"
        return 1
    # judged on samples GPTQ did not see: on its own rows it always wins, even when it overfits
    before = _output_loss(layer, layer.weight_q.float(), zero, scale, held, act)
    after = _output_loss(layer, q, zero, scale, held, act)
    if after <= before:
        layer.set_integer_weight(q)
    note.update(gptq_loss_nearest=before, gptq_loss=min(before, after), gptq_iterations=1,
                gptq_kept=after <= before)
    return 1


def holdout(rows: LayerRows, fraction: float = 0.25) -> tuple[LayerRows, LayerRows]:
    """The rows of the first samples (to fit) and of the last `fraction` of them (to check);
    rows are sample-major, `per_sample` each. One sample only: the same rows twice."""
    samples = rows.inputs.shape[0] // max(rows.per_sample, 1)
    if samples < 2:
        return rows, rows
    cut = (samples - max(1, round(samples * fraction))) * rows.per_sample
    return (LayerRows(rows.inputs[:cut], rows.target[:cut], rows.per_sample),
            LayerRows(rows.inputs[cut:], rows.target[cut:], rows.per_sample))


@torch.no_grad()
def _output_loss(layer: nn.Module, q: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor,
                 rows: LayerRows, act: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The layer's output error after its ReLU / ReLU6 (errors the clamp hides do not count)."""
    w = (q.reshape(scale.shape) - zero) * scale
    return float(reconstruction_loss(act(rows_forward(layer, w, rows.inputs)),
                                     act(rows.target), -1))


@torch.no_grad()
def _gptq_layer(layer: nn.Module, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                qmin: int, qmax: int, inputs: torch.Tensor, config: QuantConfig
                ) -> torch.Tensor | None:
    """GPTQ on the layer's input rows (groups == 1); None for grouped convolutions."""
    if layer_kind(layer) in ("depthwise", "grouped"):
        return None
    transpose = isinstance(layer, GroupedLinear)
    w2d = weight.t() if transpose else weight.reshape(weight.shape[0], -1)
    h = torch.zeros(inputs.shape[1], inputs.shape[1], dtype=torch.float64)
    for chunk in inputs.split(4096):  # float32 products, summed in float64
        h += (2.0 * chunk.T @ chunk).double()
    h /= max(inputs.shape[0], 1)

    def two_d(t: torch.Tensor) -> torch.Tensor:
        return t.t() if transpose else t.reshape(t.shape[0], -1)

    q = gptq(w2d, h, two_d(scale), two_d(zero), qmin, qmax,
             block_size=config.advanced.gptq_block_size, damping=config.advanced.gptq_damping)
    return q.t().contiguous() if transpose else q.reshape(weight.shape)


@torch.no_grad()
def _correct_bias(layer: nn.Module, float_model: nn.Module, name: str, rows: LayerRows | None,
                  mode: BiasCorrection, input_means: dict[str, torch.Tensor],
                  note: dict[str, Any]) -> bool:
    if mode is BiasCorrection.EMPIRICAL:
        if rows is None:
            return False
        shift = empirical_bias_shift(rows.target, rows_forward(layer, layer.weight(),
                                                                rows.inputs), -1)
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
