"""Quantization core benchmark: calibrators, bit widths, methods, and peers, on every zoo model.

For each zoo model, the same fp32 ONNX and the same calibration samples feed edgeopt's five
calibrators at W8A8 and W4A8, weight-only W8 and W4 (g32), QAT at W4A8, and ONNX Runtime's
quantize_static / quantize_dynamic (and NNCF where installed). Accuracy is measured in ONNX
Runtime on the test split; latency ratios vs fp32 are medians of interleaved runs (1 thread).

    .venv/bin/python bench/bench_quant.py [--models lenet5,resnet8] [--rounds 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import (
    PAIRS,
    calibration_tensor,
    nncf_quantize,
    ort_quantize_dynamic,
    ort_quantize_static,
)

import edgeopt as eo
from edgeopt.runtime.measure import compare_latency, measure

CALIBRATORS = ("minmax", "moving_average", "percentile", "entropy", "mse")
W4 = eo.QuantSpec(bits=4)


def variants() -> dict[str, eo.QuantConfig]:
    out = {f"W8A8 {c}": eo.QuantConfig(calibration=c) for c in CALIBRATORS}
    out |= {f"W4A8 {c}": eo.QuantConfig(calibration=c, weights=W4) for c in CALIBRATORS}
    out["W8 weight-only"] = eo.QuantConfig(method="weight_only", activations=None)
    out["W4 g32 weight-only"] = eo.QuantConfig(
        method="weight_only", activations=None,
        weights=eo.QuantSpec(bits=4, granularity="per_group", group_size=32))
    out["W4A8 QAT (3 epochs)"] = eo.QuantConfig(method="qat", weights=W4, epochs=3, lr=1e-4)
    return out


def build(model_name: str, data_name: str, folder: Path) -> tuple[list[tuple[str, Path, float]],
                                                                  eo.datasets.Splits]:
    """Every artifact as (label, path, seconds to quantize)."""
    splits = eo.datasets.load(data_name, seed=0)
    model = eo.zoo.pretrained(model_name, data_name)
    calib = calibration_tensor(splits)
    example = calib[:1]
    fp32 = eo.export_onnx(model, folder / "fp32.onnx", example)
    artifacts = [("fp32", fp32, 0.0)]
    for i, (label, config) in enumerate(variants().items()):
        data = splits.train if config.method.value == "qat" else [calib]
        start = time.perf_counter()
        try:
            q = eo.apply(model, config, data=data)
        except eo.errors.EdgeoptError as exc:  # e.g. grouped weights on a model without Linear
            print(f"<!-- {model_name} {label}: {exc} -->")
            continue
        path = eo.export_onnx(q, folder / f"v{i}.onnx", example)
        artifacts.append((label, path, time.perf_counter() - start))
    peers: list[tuple[str, Callable[[], Path | None]]] = [
        ("ORT quantize_static", lambda: ort_quantize_static(fp32, folder / "ort_s.onnx", calib)),
        ("ORT quantize_dynamic", lambda: ort_quantize_dynamic(fp32, folder / "ort_d.onnx")),
        ("NNCF", lambda: nncf_quantize(fp32, folder / "nncf.onnx", calib)),
    ]
    for label, make in peers:
        start = time.perf_counter()
        path = make()
        if path is not None:
            artifacts.append((label, path, time.perf_counter() - start))
    return artifacts, splits


def bench_one(model_name: str, data_name: str, rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        artifacts, splits = build(model_name, data_name, Path(tmp))
        results = [measure(p, splits.test, runs=3, warmup=1) for _, p, _ in artifacts]
        medians = compare_latency([p for _, p, _ in artifacts], splits.test, threads=1,
                                  rounds=rounds)
    base = results[0]
    rows = []
    for (label, _, seconds), r, median in zip(artifacts, results, medians):
        drop = 100 * (base.accuracy - r.accuracy)
        int8 = sum(r.int8_ops.values())
        kernels = f"{int8}/{int8 + sum(r.float_ops.values())}"
        rows.append(f"| {model_name} | {label} | {100 * r.accuracy:.2f} | {drop:+.2f} | "
                    f"{r.size_bytes / 1024:.1f} | {medians[0] / median:.2f}x | {kernels} | "
                    f"{seconds:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(m for m, _ in PAIRS))
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    print("| model | artifact | test acc % | drop (pt) | size KiB | speed vs fp32 (1t) | "
          "int8 kernels | quantize s |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, data_name in PAIRS:
        if model_name in args.models.split(","):
            for row in bench_one(model_name, data_name, args.rounds):
                print(row, flush=True)


if __name__ == "__main__":
    main()
