"""edgeopt's integer C on an emulated Cortex-M4 (qemu mps2-an386) for the MLPerf Tiny models,
beside TFLite Micro running edgeopt's .tflite of the same integer graph.

Per model (default int8 PTQ): accuracy of the int8 ONNX file (trained models only), flash and RAM
of the linked Cortex-M4 image (arm-none-eabi-size; flash without the harness's test inputs; RAM =
static data with the C arena + measured stack high-water + the input buffer an application holds),
the .tflite file and TFLite Micro's arena for it (TFLite Micro's interpreter code, some 100 KB,
not counted), instructions per inference
(qemu -icount, exact), top-1 agreement of the board's outputs with ONNX Runtime on the int8 ONNX
file, and whether the board and TFLite Micro equal edgeopt's integer reference bit for bit.

The MLPerf Tiny shapes (ds_cnn_kws 1x49x10, resnet8 3x32x32, mobilenetv1_vww 3x96x96,
fc_autoencoder 640) have no packaged data set: random weights, calibrated and tested on random
normal inputs, so accuracy is n/a and agreement is on random inputs. dscnn and resnet8 on
mnist5k are the trained rows.

    .venv/bin/python bench/bench_mcu.py [--models ds_cnn_kws,resnet8] [--board-inputs 5]
        [--samples 200] [--target cortex-m4] [--portable]

`--host` instead times the generated C on this CPU beside ONNX Runtime (see bench_host):

    .venv/bin/python bench/bench_mcu.py --host [--models lenet300,dscnn] [--rounds 5] [--repeats 300]
    .venv/bin/python bench/bench_mcu.py --host --agreement 300   # reference vs ONNX Runtime, top-1
"""

from __future__ import annotations

import argparse
import dataclasses
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

HEADER = ("| model | weights | int8 accuracy | flash (image) | .tflite file | RAM (image) | "
          "TFLM arena | RAM / TFLM arena | instructions / inference | top-1 = ONNX int8 | "
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


def bench_one(case: Case, folder: Path, samples: int, board_inputs: int,
              target: str, portable: bool = False) -> tuple[str, list[dict]]:
    from edgeopt.export import tflite

    calib, x, y = _data(case, samples)
    qmodel = eo.apply(_model(case), eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"{case.model}.onnx", calib[:1])
    graph = lower_onnx(onnx_path, calibration=calib[:64].numpy())
    xq = reference.quantize_input(graph, x).reshape(len(x), -1)
    onnx_out = _onnx(onnx_path, x)
    ref = np.stack([reference_output(graph, row) for row in xq])
    spec = get_target(target)
    if portable:  # the plain C kernels, for comparison with the DSP ones
        spec = dataclasses.replace(spec, cflags=(*spec.cflags, "-DEDGEOPT_PORTABLE"))
    board = run_graph_on_target(graph, spec, xq[:board_inputs], folder / "mcu")
    tfl = tflite.graph_to_tflite(graph)
    tflm = tflite.run_tflm(tfl, xq.reshape(len(xq), *graph.tensors[graph.inputs[0]].shape[1:]))
    accuracy = "n/a" if y is None else f"{100 * np.mean(onnx_out.argmax(1) == y):.2f} %"
    bit_exact = np.array_equal(board["outputs"], ref[:board_inputs])
    tflm_exact = int(np.all(tflm.reshape(len(xq), -1) == ref, axis=1).sum())
    arena = tflite.tflm_arena_bytes(tfl)
    return (f"| {case.label} | {'trained' if case.data else 'random'} | {accuracy} | "
            f"{_kib(board['flash_bytes'])} | {_kib(len(tfl))} | {_kib(board['ram_bytes'])} | "
            f"{_kib(arena)} | {board['ram_bytes'] / arena:.2f} | "
            f"{board['instructions_per_inference'] / 1e6:.2f} M | "
            f"{100 * agreement(ref, onnx_out):.1f} % ({len(x)}) | "
            f"{'yes' if bit_exact else 'NO'} ({board_inputs}) | {tflm_exact}/{len(x)} |",
            board["layers"])


def layer_table(label: str, layers: list[dict]) -> str:
    """Instructions per layer on the board, with MACs and instructions per MAC."""
    rows = [f"\n{label}: instructions per layer\n", "| layer | kind | MACs | instructions | per MAC |",
            "|---|---|---|---|---|"]
    for layer in layers:
        n, macs = layer.get("instructions"), layer.get("macs") or 0
        per = f"{n / macs:.1f}" if n and macs else ""
        rows.append(f"| {layer['name']} | {layer['kind']} | {macs:,} | {n or 0:,} | {per} |")
    return "\n".join(rows)


def _onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + 64].astype(np.float32)})[0]
           for i in range(0, len(x), 64)]
    return np.concatenate(out).reshape(len(x), -1)


def _kib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024:.1f} KiB"


HOST_CASES = [Case("lenet300", "lenet300", (1, 28, 28), 10), Case("lenet5", "lenet5", (1, 28, 28), 10),
              Case("dscnn", "dscnn", (1, 49, 10), 12), Case("resnet8", "resnet8", (3, 32, 32), 10),
              Case("tcn1d", "tcn1d", (3, 128), 4)]
HOST_HEADER = ("| model | MACs | C (gcc -O3 -march=native), via ctypes | ONNX Runtime int8 (1 thread) | "
               "C time / ORT time | C timed inside C | RAM: arena + input + output | TFLM arena | C = reference |\n"
               "|---|---|---|---|---|---|---|---|---|")
HOST_CFLAGS = ("-O3", "-march=native", "-std=c99")  # what the generated Makefile's host build uses


def _c_library(out_dir: Path):
    """The generated C (every .c but the self-test's main) as a shared library, edgeopt_model_invoke typed."""
    import ctypes
    import subprocess

    lib = out_dir / "libedgeopt_model.so"
    sources = [str(p) for p in sorted(out_dir.glob("*.c")) if p.name != "selftest.c"]
    subprocess.run(["gcc", *HOST_CFLAGS, "-shared", "-fPIC", "-o", str(lib), *sources], check=True)
    invoke = ctypes.CDLL(str(lib)).edgeopt_model_invoke
    invoke.argtypes, invoke.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
    return invoke


def _timed(call, repeats: int) -> float:
    """Median process CPU time of one call, in µs."""
    runs = []
    for _ in range(repeats):
        start = time.process_time_ns()
        call()
        runs.append((time.process_time_ns() - start) / 1e3)
    return float(np.median(runs))


def bench_host(case: Case, folder: Path, rounds: int, repeats: int) -> str:
    """The generated C on this CPU beside ONNX Runtime on the int8 ONNX file, both called the same way: from
    Python, batch 1, one call at a time (the C through ctypes on the int8 input, ONNX Runtime's session.run
    with 1 thread on the float input its graph quantizes), medians over `repeats` calls, interleaved round
    by round, median of the rounds; process CPU time, so a busy shared machine's descheduling is not counted.
    Also the self-test's own timing of the C inside C. RAM is edgeopt's planned arena plus the caller's
    input and output buffers."""
    import subprocess

    import onnxruntime as ort

    from edgeopt.deploy import build_c, run_host

    calib, x, _ = _data(case, 64)
    qmodel = eo.apply(_model(case), eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"{case.label}.onnx", calib[:1])
    graph = lower_onnx(onnx_path, calibration=calib[:64].numpy())
    xq = reference.quantize_input(graph, x[:16]).reshape(16, -1)
    info = build_c(graph, folder / f"c-{case.label}", test_inputs=xq)
    exact = run_host(info.out_dir).strip().endswith("16/16 bit-exact")
    invoke = _c_library(info.out_dir)
    c_in = np.ascontiguousarray(xq[0])
    c_out = np.zeros(graph.tensors[graph.outputs[0]].size, np.int8)
    c_args = (c_in.ctypes.data, c_out.ctypes.data)
    invoke(*c_args)
    exact = exact and np.array_equal(c_out, reference_output(graph, xq[0]).reshape(-1))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name, feed = session.get_inputs()[0].name, x[:1].astype(np.float32)
    times: dict[str, list[float]] = {"c": [], "ort": [], "c_in_c": []}
    for _ in range(rounds):
        times["c"].append(_timed(lambda: invoke(*c_args), repeats))
        times["ort"].append(_timed(lambda: session.run(None, {name: feed}), repeats))
        out = subprocess.run(["make", "-s", "-C", str(info.out_dir), "host", f"REPEATS={repeats}"],
                             capture_output=True, text=True, check=True).stdout
        times["c_in_c"].append(float(out.split("median")[1].split()[0]))
    c_us, rt, inner = (float(np.median(times[k])) for k in ("c", "ort", "c_in_c"))
    return (f"| {case.label} | {info.macs / 1e6:.2f} M | {c_us:.1f} µs | {rt:.1f} µs | {c_us / rt:.2f}× | "
            f"{inner:.1f} µs | {_kib(info.ram_bytes + info.io_bytes)} | {_kib(_tflm_arena(graph))} | "
            f"{'yes' if exact else 'NO'} (16) |")


def _tflm_arena(graph) -> int | None:
    try:
        from edgeopt.export import tflite

        return tflite.tflm_arena_bytes(tflite.graph_to_tflite(graph))
    except Exception:  # tflite-micro not installed (dev extra): the column says n/a
        return None


def reference_agreement(case: Case, folder: Path, n: int) -> str:
    """edgeopt's integer reference against ONNX Runtime on the int8 ONNX file, on n inputs: top-1, and the
    output difference in steps of the int8 output scale (ORT requantizes in float, TFLite in fixed point)."""
    calib, x, _ = _data(case, n)
    qmodel = eo.apply(_model(case), eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"agree-{case.label}.onnx", calib[:1])
    graph = lower_onnx(onnx_path, calibration=calib[:64].numpy())
    out = graph.tensors[graph.outputs[0]]
    ours = np.stack([reference.dequantize(out, reference.run(graph, row)[0]).reshape(-1)
                     for row in reference.quantize_input(graph, x)])
    runtime = _onnx(onnx_path, x)
    steps = np.abs(ours - runtime) / float(out.qparams.scale)
    return (f"| {case.label} | {n} | {100 * np.mean(ours.argmax(1) == runtime.argmax(1)):.1f} % | "
            f"{100 * np.mean(steps <= 1):.1f} % | {steps.max():.2f} |")


def main_host(args: argparse.Namespace) -> None:
    wanted = args.models.split(",") if args.models else [c.label for c in HOST_CASES]
    with tempfile.TemporaryDirectory() as tmp:
        if args.agreement:
            print("| model | inputs | top-1 = ONNX Runtime int8 | outputs within 1 step | largest difference "
                  "(steps) |\n|---|---|---|---|---|")
            for case in HOST_CASES:
                if case.label in wanted:
                    print(reference_agreement(case, Path(tmp), args.agreement), flush=True)
            return
        print(HOST_HEADER)
        for case in HOST_CASES:
            if case.label in wanted:
                print(bench_host(case, Path(tmp), args.rounds, args.repeats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", action="store_true", help="C on this CPU vs ONNX Runtime (zoo models)")
    parser.add_argument("--rounds", type=int, default=5, help="--host: interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=300, help="--host: inferences per round")
    parser.add_argument("--agreement", type=int, default=0,
                        help="--host: instead, top-1 of the integer reference vs ONNX Runtime on N inputs")
    parser.add_argument("--models", default=None)
    parser.add_argument("--samples", type=int, default=200, help="inputs for agreement")
    parser.add_argument("--board-inputs", type=int, default=5, help="inputs run in qemu")
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--per-layer", action="store_true", help="print per-layer tables too")
    parser.add_argument("--portable", action="store_true",
                        help="build the plain C kernels (-DEDGEOPT_PORTABLE), not the Cortex-M DSP ones")
    args = parser.parse_args()
    if args.host:
        main_host(args)
        return
    args.models = args.models or ",".join(c.label for c in CASES)
    missing = mcu.toolchain_missing()
    if missing:
        raise SystemExit(missing)
    wanted = args.models.split(",")
    print(HEADER)
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case.label in wanted:
                start = time.perf_counter()
                row, layers = bench_one(case, Path(tmp), args.samples, args.board_inputs,
                                        args.target, args.portable)
                print(row, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)
                tables.append(layer_table(case.label, layers))
    if args.per_layer:
        print("\n".join(tables))


if __name__ == "__main__":
    main()
