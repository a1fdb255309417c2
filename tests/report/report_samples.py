"""Plausible metrics of a ResNet-8 run (baseline -> prune -> distill -> QAT int8 -> low-rank ->
cluster), shaped as the runner writes metrics.json and as techniques record their statistics."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
          "layer2.0.downsample", "layer3.0.conv1", "layer3.0.conv2", "fc"]
PARAMS = [432, 2304, 2304, 4608, 9216, 512, 18432, 36864, 650]


def _hist(rng: random.Random, scale: float, bins: int = 24) -> dict[str, list[float]]:
    edges = [scale * (-3 + 6 * i / bins) for i in range(bins + 1)]
    counts = [0] * bins
    for _ in range(600):
        v = rng.gauss(0, scale / 2.2)
        k = min(bins - 1, max(0, int((v / scale + 3) / 6 * bins)))
        counts[k] += 1
    return {"edges": edges, "counts": counts}


def _stage(name: str, technique: str, acc: float, size: int, latency: float, macs: int,
           params: int, peak: int, base: dict[str, Any] | None) -> dict[str, Any]:
    stage = {"name": name, "technique": technique, "accuracy": acc, "size_bytes": size,
             "latency_ms": latency, "onnx": f"{name}.onnx", "params": params, "macs": macs,
             "peak_activation_bytes": peak, "speedup": {"1t": 1.0}, "accuracy_drop": None,
             "size_ratio": None, "runtime": {"int8_ops": {}, "float_ops": {"Conv": 9}},
             "technique_stats": {}, "warnings": []}
    if base:
        stage["speedup"] = {"1t": base["latency_ms"] / latency}
        stage["accuracy_drop"] = 100 * (base["accuracy"] - acc)
        stage["size_ratio"] = base["size_bytes"] / size
    return stage


def prune_stats() -> dict[str, Any]:
    sparsity = [0.2, 0.45, 0.5, 0.55, 0.6, 0.3, 0.7, 0.75, 0.4]
    layers = [{"name": n, "sparsity": s, "params_before": p, "params_after": round(p * (1 - s)),
               "macs_before": p * 196, "macs_after": round(p * 196 * (1 - s))}
              for n, s, p in zip(LAYERS, sparsity, PARAMS)]
    rounds = [{"round": r, "sparsity": 0.6 * r / 4, "accuracy": 0.985 - 0.004 * r * r / 4}
              for r in range(5)]
    rng = random.Random(1)
    masks = {n: [[1.0 if rng.random() > s else 0.0 for _ in range(24)] for _ in range(16)]
             for n, s in zip(LAYERS[1:5], sparsity[1:5])}
    return {"structure": "unstructured", "criterion": "magnitude", "target_sparsity": 0.6,
            "layers": layers, "rounds": rounds, "masks": masks,
            "curves": {"finetune_loss": [0.31, 0.12, 0.08], "val_accuracy": [0.95, 0.976, 0.98]}}


def quant_stats() -> dict[str, Any]:
    rng = random.Random(0)
    layers = []
    for i, name in enumerate(LAYERS):
        w_scale = 0.004 * (6 if name == "layer2.0.downsample" else 1)
        layers.append({"name": name, "type": "Conv2d" if name != "fc" else "Linear",
                       "weight_bits": 8, "weight_error_hist": _hist(rng, w_scale),
                       "weight_sqnr_db": 24.0 if name == "layer2.0.downsample" else 40.0 + i,
                       "act_error_hist": _hist(rng, 0.01),
                       "clip_ratio": [0.002, 0.004, 0.001, 0.03, 0.002, 0.0, 0.006, 0.012, 0.0][i],
                       "saturation": [0.001, 0.002, 0.0, 0.018, 0.001, 0.0, 0.004, 0.007, 0.0][i],
                       "channel_saturation": [abs(rng.gauss(0, 0.01)) * (3 if i == 3 else 1)
                                              for _ in range(16 * (1 + i // 3))]})
    curves = {"train_loss": [0.21, 0.12, 0.09, 0.08], "val_accuracy": [0.962, 0.975, 0.979, 0.981],
              "quant_mse": [3.1e-3, 1.2e-3, 7.0e-4, 5.5e-4]}
    sens = [{"name": n, "metric_drop": round(abs(math.sin(i + 1)) * 0.6, 3),
             "sqnr_db": 28 + 6 * math.cos(i)} for i, n in enumerate(LAYERS)]
    return {"method": "qat", "folded_batch_norms": 7, "quantized_layers": LAYERS,
            "float_layers": [], "activation_quantizers": 11, "calibration_samples": 512,
            "layers": layers, "curves": curves, "sensitivity": sens}


def full_metrics() -> dict[str, Any]:
    base = _stage("baseline", "baseline", 0.9852, 311_000, 0.231, 11_900_000, 77_000, 50_176,
                  None)
    pruned = _stage("pruned", "prune", 0.9815, 190_000, 0.205, 5_400_000, 36_000, 50_176, base)
    pruned["technique_stats"]["prune"] = prune_stats()
    distill = _stage("distilled", "distill", 0.9838, 190_000, 0.204, 5_400_000, 36_000, 50_176,
                     base)
    distill["technique_stats"]["distill"] = {
        "temperature": 4.0, "alpha": 0.7,
        "curves": {"train_loss": [1.9, 0.9, 0.6, 0.5, 0.45], "kd_loss": [1.2, 0.5, 0.3, 0.25, 0.2],
                   "val_accuracy": [0.95, 0.972, 0.979, 0.982, 0.9838]}}
    qat = _stage("int8_qat", "quantize", 0.9829, 58_000, 0.152, 5_400_000, 36_000, 12_544, base)
    qat["technique_stats"]["quant"] = quant_stats()
    qat["runtime"] = {"int8_ops": {"QLinearConv": 8, "QLinearMatMul": 1}, "float_ops": {}}
    lowrank = _stage("lowrank", "lowrank", 0.9791, 240_000, 0.199, 8_100_000, 58_000, 50_176,
                     base)
    lowrank["technique_stats"]["lowrank"] = {"method": "svd", "layers": [
        {"name": n, "rank": max(2, p // 400), "full_rank": max(4, p // 150), "energy": 0.9 + i / 100,
         "params_before": p, "params_after": p // 2} for i, (n, p) in enumerate(zip(LAYERS, PARAMS))]}
    cluster = _stage("clustered", "cluster", 0.9840, 120_000, 0.233, 11_900_000, 77_000, 50_176,
                     base)
    cluster["technique_stats"]["cluster"] = {"clusters": 16, "layers": [
        {"name": n, "clusters": 16, "stored_bytes": p // 2 + 64} for n, p in zip(LAYERS, PARAMS)]}
    cluster["warnings"] = ["not faster than baseline at 1 thread(s): 0.99x the baseline's speed."]
    stages = [base, pruned, distill, qat, lowrank, cluster]
    recipe = {"model": "resnet8", "data": "mnist5k",
              "stages": [{"name": s["name"], "technique": s["technique"]} for s in stages[1:]]}
    return {"edgeopt_version": "0.1.0", "model": "resnet8", "data": "mnist5k", "recipe": recipe,
            "stages": stages, "warnings": [f"clustered: {w}" for w in cluster["warnings"]]}


def default_metrics() -> dict[str, Any]:
    """The built-in default: baseline and int8 PTQ, with today's QuantStats fields only."""
    full = full_metrics()
    base, qat = copy.deepcopy(full["stages"][0]), copy.deepcopy(full["stages"][3])
    qat["name"], qat["technique"] = "int8", "quantize"
    qat["technique_stats"]["quant"] = {
        "method": "ptq", "folded_batch_norms": 7, "quantized_layers": LAYERS, "float_layers": [],
        "activation_quantizers": 11, "calibration_samples": 512,
        "layers": [{"name": n, "type": "Conv2d", "weight_bits": 8, "weight_scale_min": 1e-3,
                    "weight_scale_max": 4e-3, "input_scale": 0.02, "input_zero_point": 0}
                   for n in LAYERS]}
    return {"edgeopt_version": "0.1.0", "model": "resnet8", "data": "mnist5k",
            "recipe": {"stages": [{"name": "int8", "technique": "quantize"}]},
            "stages": [base, qat], "warnings": []}
