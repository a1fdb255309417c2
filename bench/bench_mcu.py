"""edgeopt's integer C on an emulated Cortex-M4 (qemu mps2-an386) for the MLPerf Tiny models,
beside TFLite Micro running edgeopt's .tflite of the same integer graph.

Per model (default int8 PTQ): accuracy of the int8 ONNX file (trained models only), flash and RAM
of the linked Cortex-M4 image (arm-none-eabi-size; RAM = static data + measured stack), the
planner's arena, the .tflite file and TFLite Micro's arena for it, instructions per inference
(qemu -icount, exact), top-1 agreement of the board's outputs with ONNX Runtime on the int8 ONNX
file, and whether the board and TFLite Micro equal edgeopt's integer reference bit for bit.

The MLPerf Tiny shapes (ds_cnn_kws 1x49x10, resnet8 3x32x32, mobilenetv1_vww 3x96x96,
fc_autoencoder 640) have no packaged data set: random weights, calibrated and tested on random
normal inputs, so accuracy is n/a and agreement is on random inputs. dscnn and resnet8 on
mnist5k are the trained rows.

    .venv/bin/python bench/bench_mcu.py [--models ds_cnn_kws,resnet8] [--board-inputs 5]
        [--samples 200] [--target cortex-m4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import calibration_tensor

import edgeopt as eo
from edgeopt.deploy import mcu, reference
from edgeopt.deploy.lower import lower_onnx
from edgeopt.deploy.stage import agreement, reference_output, run_graph_on_target
from edgeopt.deploy.targets import get_target


@dataclass(frozen=True)
class Case:
    label: str
    model: str
    shape: tuple[int, ...]
    classes: int
    data: str | None = None  # a built-in data set: trained weights; None: random weights


CASES = [
    Case("ds_cnn_kws", "ds_cnn_kws", (1, 49, 10), 12),
    Case("resnet8", "resnet8", (3, 32, 32), 10),
    Case("mobilenetv1_vww", "mobilenetv1_vww", (3, 96, 96), 2),
    Case("fc_autoencoder", "fc_autoencoder", (640,), 2),
    Case("dscnn/mnist5k", "dscnn", (1, 28, 28), 10, "mnist5k"),
    Case("resnet8/mnist5k", "resnet8", (1, 28, 28), 10, "mnist5k"),
]

HEADER = ("| model | weights | int8 accuracy | flash (M4 image) | .tflite | RAM (M4 image) | "
          "edgeopt arena | TFLM arena | instructions / inference | top-1 = ONNX int8 | "
          "board = reference | TFLM = reference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _data(case: Case, samples: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """Calibration inputs, test inputs and test labels (None for random-weight cases)."""
    if case.data is None:
        gen = torch.Generator().manual_seed(0)
        calib = torch.randn(128, *case.shape, generator=gen)
        return calib, torch.randn(samples, *case.shape, generator=gen).numpy(), None
    splits = eo.datasets.load(case.data, seed=0)
    n = min(samples, len(splits.test))
    x = np.stack([splits.test[i][0].numpy() for i in range(n)])
    y = np.array([int(splits.test[i][1]) for i in range(n)])
    return calibration_tensor(splits, 512), x, y


def _model(case: Case) -> torch.nn.Module:
    if case.data is not None:
        return eo.zoo.pretrained(case.model, case.data)
    torch.manual_seed(0)
    return eo.zoo.create(case.model, case.shape, case.classes).eval()


def bench_one(case: Case, folder: Path, samples: int, board_inputs: int, target: str) -> str:
    from edgeopt.export import tflite

    calib, x, y = _data(case, samples)
    qmodel = eo.apply(_model(case), eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"{case.model}.onnx", calib[:1])
    graph = lower_onnx(onnx_path, calibration=calib[:64].numpy())
    xq = reference.quantize_input(graph, x).reshape(len(x), -1)
    onnx_out = _onnx(onnx_path, x)
    ref = np.stack([reference_output(graph, row) for row in xq])
    board = run_graph_on_target(graph, get_target(target), xq[:board_inputs], folder / "mcu")
    tfl = tflite.graph_to_tflite(graph)
    tflm = tflite.run_tflm(tfl, xq.reshape(len(xq), *graph.tensors[graph.inputs[0]].shape[1:]))
    accuracy = "n/a" if y is None else f"{100 * np.mean(onnx_out.argmax(1) == y):.2f} %"
    bit_exact = np.array_equal(board["outputs"], ref[:board_inputs])
    tflm_exact = int(np.all(tflm.reshape(len(xq), -1) == ref, axis=1).sum())
    return (f"| {case.label} | {'trained' if case.data else 'random'} | {accuracy} | "
            f"{_kib(board['flash_bytes'])} | {_kib(len(tfl))} | {_kib(board['ram_bytes'])} | "
            f"{_kib(board['arena_bytes'])} | {_kib(tflite.tflm_arena_bytes(tfl))} | "
            f"{board['instructions_per_inference'] / 1e6:.2f} M | "
            f"{100 * agreement(ref, onnx_out):.1f} % ({len(x)}) | "
            f"{'yes' if bit_exact else 'NO'} ({board_inputs}) | {tflm_exact}/{len(x)} |")


def _onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + 64].astype(np.float32)})[0]
           for i in range(0, len(x), 64)]
    return np.concatenate(out).reshape(len(x), -1)


def _kib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024:.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(c.label for c in CASES))
    parser.add_argument("--samples", type=int, default=200, help="inputs for agreement")
    parser.add_argument("--board-inputs", type=int, default=5, help="inputs run in qemu")
    parser.add_argument("--target", default="cortex-m4")
    args = parser.parse_args()
    missing = mcu.toolchain_missing()
    if missing:
        raise SystemExit(missing)
    wanted = args.models.split(",")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case.label in wanted:
                start = time.perf_counter()
                row = bench_one(case, Path(tmp), args.samples, args.board_inputs, args.target)
                print(row, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
