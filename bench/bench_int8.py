"""fp32 vs edgeopt int8 vs ONNX Runtime's own quantize_static, on every zoo model.

Same fp32 ONNX, same calibration samples; latencies measured interleaved in one run (medians,
batch 1) at 1 and 2 threads. Prints a markdown table for the README.

    .venv/bin/python bench/bench_int8.py [--models resnet8,dscnn] [--rounds 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import PAIRS, calibration_tensor, ort_quantize_static

import edgeopt as eo
from edgeopt.recipes.speed import fastest_placement
from edgeopt.runtime.measure import compare_latency, measure


def bench_one(model_name: str, data_name: str, folder: Path, rounds: int) -> list[str]:
    splits = eo.datasets.load(data_name, seed=0)
    model = eo.zoo.pretrained(model_name, data_name)
    config = eo.QuantConfig()
    calib = calibration_tensor(splits, config.calibration_samples)
    example = calib[:1]
    fp32 = eo.export_onnx(model, folder / f"{model_name}_fp32.onnx", example)
    start = time.perf_counter()
    qmodel = eo.apply(model, config, data=[calib])
    ours = eo.export_onnx(qmodel, folder / f"{model_name}_int8.onnx", example)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    guarded_model, choice = fastest_placement(model, fp32, config.placements(), [calib],
                                              example, splits.val, threads=1, rounds=rounds)
    guarded = eo.export_onnx(guarded_model.model, folder / f"{model_name}_guard.onnx", example)
    guard_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = ort_quantize_static(fp32, folder / f"{model_name}_ort.onnx", calib)
    theirs_s = time.perf_counter() - start
    paths = [fp32, ours, guarded, theirs]
    results = [measure(p, splits.test, threads=1, runs=5, warmup=1) for p in paths]
    lat = {t: compare_latency(paths, splits.test, threads=t, rounds=rounds) for t in (1, 2)}
    rows = []
    labels = ["fp32", "edgeopt int8", f"edgeopt int8, speed guard ({choice.chosen})",
              "ORT quantize_static"]
    for i, label in enumerate(labels):
        r = results[i]
        speed = " / ".join(f"{lat[t][0] / lat[t][i]:.2f}x" for t in (1, 2))
        secs = {1: f"{ours_s:.1f}", 2: f"{guard_s:.1f}", 3: f"{theirs_s:.1f}"}.get(i, "")
        rows.append(f"| {model_name} | {label} | {100 * r.accuracy:.2f} | {r.size_bytes / 1024:.1f}"
                    f" | {lat[1][i]:.3f} | {lat[2][i]:.3f} | {speed} | "
                    f"{sum(r.int8_ops.values())}/{sum(r.int8_ops.values()) + sum(r.float_ops.values())}"
                    f" | {secs} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(m for m, _ in PAIRS))
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    wanted = args.models.split(",")
    print("| model | artifact | test acc % | size KiB | ms @1t | ms @2t | speedup 1t / 2t | "
          "int8 ops | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, data_name in PAIRS:
            if model_name in wanted:
                for row in bench_one(model_name, data_name, Path(tmp), args.rounds):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
