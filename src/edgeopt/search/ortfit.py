"""x86-ort latency of a whole model, predicted from its structure by a linear model fitted on
measured whole-model timings.

At 0.1-1 ms a small model's time in ONNX Runtime is mostly fixed cost per operator and the
quantize / dequantize work between layers, which a sum of one-layer timings misses (Spearman
0.32 against whole-model timings). So a model is described by a few features, each a kind of
work ORT does once per inference:

    call        1                                   session call, input Q and output DQ
    compute     sum of one-layer timings - calls    kernels in isolation (latency.LatencyTable)
    int8_layers / float_layers                      per-operator fixed cost
    other_ops   Add, pooling, concat ... (not in place)
    elements    activation elements written by every operator (memory traffic, QLinearAdd)
    boundary    elements crossing int8 <-> float (DQ / Q pairs around float layers)

and latency = features . coefficients, the coefficients non-negative and fitted (relative error)
on measured timings of random policies of training architectures; `fit_for_this_machine`
measures them once and caches the fit in the user cache folder, which searches then use
(edgeopt.search.latency.latency_model). On a heavily loaded 2-core machine this fit did not
rank held-out architectures better than the plain layer sum (README), so without a cached fit
the search keeps the layer sum. Timing is the median of the
calling thread's CPU time over runs on one ORT thread: the machine may be shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.search.space import FLOAT, Policy

FEATURES = ("call", "compute", "int8_layers", "float_layers", "other_ops", "elements", "boundary")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
# (zoo name, input shape): the training architectures of the fit; the held-out ones are in
# bench/bench_search.py
TRAIN_ARCHS = (("lenet5", (1, 28, 28)), ("dscnn", (1, 28, 28)), ("lenet300", (1, 28, 28)),
               ("tcn1d", (6, 100)), ("ds_cnn_kws", (1, 49, 10)))


def features(pruned: nn.Module, policy: Policy, example: torch.Tensor, table: Any) -> dict[str, float]:
    """The feature vector of `pruned` (the policy's channels already removed) under `policy`."""
    from edgeopt.search.cost import schedule
    from edgeopt.search.latency import layer_keys

    keys = layer_keys(pruned, example, policy.bits)
    call = table.call_ms()
    compute = sum(max(0.0, table.ms(k) - call) for k in keys)
    layer_names = {n for n, m in pruned.named_modules() if isinstance(m, _LAYERS)}
    floats = {n for n in layer_names if policy.bits.get(n, 8) == FLOAT}
    out = dict.fromkeys(FEATURES, 0.0)
    out.update(call=1.0, compute=compute, int8_layers=len(layer_names - floats),
               float_layers=len(floats))
    any_int8 = len(floats) < len(layer_names)
    numel = {}
    for step in schedule(pruned, example, policy.bits):
        numel[step.name] = step.numel
        if step.in_place or not step.inputs:
            continue
        target = step.target
        out["elements"] += step.numel
        if target in floats and any_int8:
            out["boundary"] += step.numel + sum(numel.get(i, 0) for i in step.inputs)
        elif target not in layer_names:
            out["other_ops"] += 1
    return out


def predict(coefficients: dict[str, float], feats: dict[str, float]) -> float:
    return float(sum(coefficients.get(k, 0.0) * v for k, v in feats.items()))


def fit(rows: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Non-negative coefficients minimising the squared relative error over (features, ms)."""
    from scipy.optimize import nnls

    x = np.array([[f[k] for k in FEATURES] for f, _ in rows], dtype=np.float64)
    y = np.array([ms for _, ms in rows], dtype=np.float64)
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    # rows divided by the measured time: least squares on relative error
    coef, _ = nnls(x / scale / y[:, None], np.ones_like(y))
    return {k: float(c / s) for k, c, s in zip(FEATURES, coef, scale)}


def time_onnx(path: str | Path, example: torch.Tensor, runs: int = 200, warmup: int = 30) -> float:
    """Median ms of the calling thread's CPU time per session run (one ORT thread)."""
    import onnxruntime as ort

    from edgeopt.runtime.inspect import session_options

    session = ort.InferenceSession(str(path), session_options(1, "all"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: example.numpy().astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.thread_time_ns()
        session.run(None, feed)
        times.append(time.thread_time_ns() - start)
    return float(np.median(times)) / 1e6


def quantized(pruned: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
    """`pruned` quantized as the policy's stage would (PTQ on random inputs: timing only)."""
    import edgeopt as eo

    overrides = {k: eo.QuantSpec(bits=b) for k, b in policy.bits.items() if b not in (8, FLOAT)}
    floats = tuple(k for k, b in policy.bits.items() if b == FLOAT)
    calib = [(torch.randn(8, *example.shape[1:]), None) for _ in range(2)]
    config = eo.QuantConfig(weight_overrides=overrides, exclude=floats, calibration_samples=16)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # no calibration bar
        return eo.apply(pruned, config, data=calib)


def measure_policy(model: nn.Module, policy: Policy, example: torch.Tensor,
                   table: Any) -> tuple[dict[str, float], float]:
    """(features, measured ms) of one policy: quantized, exported and timed in ORT."""
    from edgeopt.export.onnx import export_onnx
    from edgeopt.search.cost import pruned_copy

    pruned = pruned_copy(model, example, policy.keep)
    feats = features(pruned, policy, example, table)
    with tempfile.TemporaryDirectory(prefix="edgeopt-ortfit-") as tmp:
        # timing only: random weights may round a value differently in ORT, which is no error here
        path = export_onnx(quantized(pruned, policy, example), Path(tmp) / "m.onnx", example,
                           check=False)
        return feats, time_onnx(path, example)


def random_policy(space: Any, rng: random.Random) -> Policy:
    """Bits per layer (int8 / int4 / float) and keep ratios, float in about a third of policies."""
    bits = (4, 8, FLOAT) if rng.random() < 0.35 else (4, 8)
    return Policy(bits={n: rng.choice(bits) for n in space.layers},
                  keep={g: rng.choice(space.keep_choices) for g in space.groups})


def training_rows(archs: tuple[tuple[str, tuple[int, ...]], ...], per_arch: int, table: Any,
                  seed: int = 0, progress: bool = False,
                  log: Path | None = None) -> list[tuple[dict[str, float], float]]:
    """Measured (features, ms) of `per_arch` random policies of each zoo architecture."""
    from tqdm.auto import tqdm

    from edgeopt import zoo
    from edgeopt.search.space import build_space

    rng = random.Random(seed)
    rows = []
    bar = tqdm(total=len(archs) * per_arch, desc="latency fit", disable=not progress)
    for name, shape in archs:
        torch.manual_seed(seed)
        model = zoo.create(name, shape, 10).eval()
        example = torch.randn(1, *shape)
        space = build_space(model, example, "host")
        for _ in range(per_arch):
            rows.append(measure_policy(model, random_policy(space, rng), example, table))
            if log is not None:  # a long measurement survives a crash
                with open(log, "a") as file:
                    file.write(json.dumps([name, *rows[-1]]) + "\n")
            bar.update()
    bar.close()
    return rows


def fit_file() -> Path:
    from platformdirs import user_cache_dir

    from edgeopt.search.latency import cache_tag

    return Path(user_cache_dir("edgeopt")) / "latency" / f"fit-{cache_tag()}.json"


def fit_for_this_machine(table: Any, per_arch: int = 8, progress: bool = True) -> dict[str, float]:
    """Measure the training policies, fit, and cache the coefficients for later searches."""
    from edgeopt.atomic import write_text

    coefficients = fit(training_rows(TRAIN_ARCHS, per_arch, table, progress=progress))
    path = fit_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(coefficients, indent=1, sort_keys=True))
    except OSError:
        pass  # read-only cache: the next search fits again
    return coefficients


def cached_fit() -> dict[str, float] | None:
    try:
        data = json.loads(fit_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and set(data) == set(FEATURES) else None
