"""edgeopt's int8 .tflite files in LiteRT and TFLite Micro, against the ONNX int8 file and edgeopt's
integer reference, on every zoo model (default PTQ on the bench's pretrained weights).

Per model: .tflite and int8 ONNX sizes, top-1 agreement of LiteRT (reference kernels, optimized
built-ins, XNNPACK) and TFLite Micro with ONNX Runtime on the int8 ONNX file over the test set,
whether TFLite Micro's outputs equal edgeopt's integer reference bit for bit, and TFLite Micro's
tensor arena. Prints a markdown table for the README.

    .venv/bin/python bench/bench_tflite.py [--models lenet5,dscnn] [--samples 1000]
        [--dataset digits --epochs 5]   # other training data / a shorter training for the 2-D models
    .venv/bin/python bench/bench_tflite.py --mlperf   # MLPerf Tiny shapes, random weights
    .venv/bin/python bench/bench_tflite.py --real efficientnet-lite0,mobilenetv2-dogs   # bench/real_models.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import PAIRS, calibration_tensor

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.lower import lower_onnx
from edgeopt.export import tflite

HEADER = ("| model | data | .tflite KiB | int8 ONNX KiB | TFLM arena B | agreement with ONNX int8: "
          "LiteRT ref / builtin / XNNPACK / TFLM | TFLM = reference (outputs) | max abs diff LiteRT "
          "XNNPACK vs reference |\n|---|---|---|---|---|---|---|---|")


def onnx_top1(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 64]})[0].argmax(1)
                           for i in range(0, len(x), 64)])


def bench_one(model_name: str, data_name: str, folder: Path, samples: int, epochs: int | None) -> str:
    splits = eo.datasets.load(data_name, seed=0)
    model = eo.zoo.pretrained(model_name, data_name, epochs=epochs)
    calib = calibration_tensor(splits, eo.QuantConfig().calibration_samples)
    qmodel = eo.apply(model, eo.QuantConfig(), data=[calib])
    example = calib[:1]
    onnx_path = eo.export_onnx(qmodel, folder / f"{model_name}.onnx", example)
    graph = lower_onnx(onnx_path, calib)  # the float last layer's int8 range: the calibration set
    tfl = folder / f"{model_name}.tflite"
    tfl.write_bytes(tflite.graph_to_tflite(graph))
    n = min(samples, len(splits.test))
    x = np.stack([splits.test[i][0].numpy() for i in range(n)])
    expected = onnx_top1(onnx_path, x)
    xq = tflite.quantize_inputs(tfl, x)
    outs = {k: tflite.run_litert(tfl, xq, kernels=k) for k in ("reference", "builtin", "xnnpack")}
    outs["tflm"] = tflite.run_tflm(tfl, xq)
    ref = np.stack([np.asarray(reference.run(graph, row[None])[0]).reshape(-1) for row in xq])
    agree = " / ".join(f"{100 * np.mean(o.argmax(1) == expected):.2f} %" for o in outs.values())
    exact = f"{np.sum(np.all(outs['tflm'] == ref, axis=1))}/{n}"
    diff = int(np.abs(outs["xnnpack"].astype(int) - ref).max())
    onnx_kib = sum(p.stat().st_size for p in folder.glob(f"{model_name}.onnx*")) / 1024
    return (f"| {model_name} | {data_name} | {tfl.stat().st_size / 1024:.1f} | {onnx_kib:.1f} | "
            f"{tflite.tflm_arena_bytes(tfl)} | {agree} | {exact} | {diff} |")


MLPERF = [("ds_cnn_kws", (1, 49, 10), 12), ("resnet8", (3, 32, 32), 10),
          ("mobilenetv1_vww", (3, 96, 96), 2), ("fc_autoencoder", (640,), 2)]


def bench_random(model_name: str, shape: tuple[int, ...], classes: int, folder: Path, samples: int) -> str:
    """An MLPerf Tiny architecture at its published input shape: random weights, calibrated and
    tested on random normal inputs (sizes, arena and exactness compare; agreement is on noise)."""
    import torch

    torch.manual_seed(0)
    model = eo.zoo.create(model_name, input_shape=shape, num_classes=classes).eval()
    calib = torch.randn(64, *shape)
    qmodel = eo.apply(model, eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"{model_name}.onnx", calib[:1])
    graph = lower_onnx(onnx_path, calib)
    tfl = folder / f"{model_name}.tflite"
    tfl.write_bytes(tflite.graph_to_tflite(graph))
    xq = tflite.quantize_inputs(tfl, torch.randn(samples, *shape).numpy())
    micro = tflite.run_tflm(tfl, xq)
    ref = np.stack([np.asarray(reference.run(graph, row[None])[0]).reshape(-1) for row in xq])
    litert = tflite.run_litert(tfl, xq, kernels="reference")
    onnx_kib = sum(p.stat().st_size for p in folder.glob(f"{model_name}.onnx*")) / 1024
    return (f"| {model_name} {shape} | random | {tfl.stat().st_size / 1024:.1f} | {onnx_kib:.1f} | "
            f"{tflite.tflm_arena_bytes(tfl)} | LiteRT ref max diff {np.abs(litert.astype(int) - ref).max()} "
            f"| {np.sum(np.all(micro == ref, axis=1))}/{samples} | |")


def bench_real(name: str, folder: Path, samples: int) -> str:
    """A real pretrained CNN of bench/real_models.py: top-1 agreement with its int8 ONNX file."""
    import real_models
    import torch

    case = real_models.load(name, n_eval=samples, n_calib=32)
    qmodel = eo.apply(case.model, eo.QuantConfig(), data=case.calib)
    onnx_path = eo.export_onnx(qmodel, folder / f"{name}.onnx", case.example_input)
    graph = lower_onnx(onnx_path, torch.cat(case.calib))
    tfl = folder / f"{name}.tflite"
    tfl.write_bytes(tflite.graph_to_tflite(graph))
    x = torch.cat(case.eval_inputs).numpy()
    expected = onnx_top1(onnx_path, x)
    xq = tflite.quantize_inputs(tfl, x)
    micro = tflite.run_tflm(tfl, xq)
    ref = np.stack([np.asarray(reference.run(graph, row[None])[0]).reshape(-1) for row in xq])
    onnx_kib = sum(p.stat().st_size for p in folder.glob(f"{name}.onnx*")) / 1024
    return (f"| {name} | real ({len(x)} inputs) | {tfl.stat().st_size / 1024:.1f} | {onnx_kib:.1f} | "
            f"{tflite.tflm_arena_bytes(tfl)} | TFLM {100 * np.mean(micro.argmax(1) == expected):.2f} % | "
            f"{np.sum(np.all(micro == ref, axis=1))}/{len(x)} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(m for m, _ in PAIRS))
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--dataset", default=None, help="training data for the 2-D models")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the zoo's)")
    parser.add_argument("--mlperf", action="store_true", help="the MLPerf Tiny shapes, random weights")
    parser.add_argument("--real", default="", help="real CNNs of bench/real_models.py, comma-separated")
    args = parser.parse_args()
    wanted = args.models.split(",")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.real.split(",")):
            print(bench_real(name, Path(tmp), min(args.samples, 50)), flush=True)
        if args.mlperf:
            for model_name, shape, classes in MLPERF:
                print(bench_random(model_name, shape, classes, Path(tmp), min(args.samples, 30)), flush=True)
        if args.real or args.mlperf:
            return
        for model_name, data_name in PAIRS:
            if model_name in wanted:
                if args.dataset and data_name == "mnist5k":
                    data_name = args.dataset
                start = time.perf_counter()
                row = bench_one(model_name, data_name, Path(tmp), args.samples, args.epochs)
                print(row, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
