"""Sparse and clustered weights as real flash bytes: trained zoo models, int8, dense vs pruned vs clustered,
built by `eo.export_c` for an emulated Cortex-M4 (qemu mps2-an386), as in bench_mcu.py.

Per model and variant: int8 accuracy of the ONNX file on mnist5k's test split, the weights the C stores
(`CExport.weight_bytes`: the layers' forms from edgeopt.deploy.c.compress) beside the same weights stored
dense, flash and RAM of the linked image (arm-none-eabi-size; RAM with the arena and measured stack),
instructions per inference (qemu -icount), the forms chosen, and whether the board's outputs equal
edgeopt's integer reference bit for bit.

Variants: int8 (the trained model), pruned (magnitude, unstructured, global `--sparsity`, one recovery
epoch), clustered (`--clusters` shared values per layer, one epoch of centroid fine-tuning), pruned then
clustered (zeros kept out of the clusters). Every variant is int8 PTQ (edgeopt's default) last.

    .venv/bin/python bench/bench_mcu_compress.py [--models lenet300,dscnn] [--sparsity 0.8] [--clusters 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from common import calibration_tensor

import edgeopt as eo
from edgeopt.deploy import mcu, reference
from edgeopt.deploy.lower import lower_onnx
from edgeopt.deploy.stage import reference_output, run_graph_on_target
from edgeopt.deploy.targets import get_target

HEADER = ("| model | variant | int8 accuracy | weights stored dense | weights stored (C) | flash (image), dense | "
          "flash (image) | RAM (image) | instructions / inference | forms | board = reference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def variants(sparsity: float, clusters: int) -> dict[str, list]:
    prune = eo.PruneConfig(sparsity=sparsity, structure="unstructured", scope="global", finetune_epochs=1)
    cluster = eo.ClusterConfig(clusters=clusters, finetune_epochs=1)
    return {"int8": [], f"pruned {sparsity:.0%}": [prune], f"{clusters} clusters": [cluster],
            f"pruned {sparsity:.0%} + {clusters} clusters": [prune, cluster]}


def bench_one(model: str, label: str, configs: list, folder: Path, samples: int, board_inputs: int) -> str:
    splits = eo.datasets.load("mnist5k", seed=0)
    net = eo.zoo.pretrained(model, "mnist5k")
    for config in configs:
        net = eo.apply(net, config, data=splits.train)
    calib = calibration_tensor(splits, 512)
    qmodel = eo.apply(net, eo.QuantConfig(), data=[calib])
    onnx_path = eo.export_onnx(qmodel, folder / f"{model}.onnx", calib[:1])
    m = eo.measure(onnx_path, torch.utils.data.Subset(splits.test, range(min(samples, len(splits.test)))),
                   threads=1, runs=5, warmup=1)
    graph = lower_onnx(onnx_path, calibration=calib[:64].numpy())
    x = np.stack([splits.test[i][0].numpy() for i in range(board_inputs)])
    xq = reference.quantize_input(graph, x).reshape(board_inputs, -1)
    target = get_target("cortex-m4")
    board = run_graph_on_target(graph, target, xq, folder / "mcu")
    dense = run_graph_on_target(graph, target, xq, folder / "mcu-dense", compress_weights=False)
    exact = np.array_equal(board["outputs"], np.stack([reference_output(graph, row) for row in xq]))
    forms = Counter(layer["weight_form"] for layer in board["layers"] if "weight_form" in layer)
    return (f"| {model} | {label} | {100 * m.accuracy:.2f} % | {_kib(_weights(dense))} | {_kib(_weights(board))} | "
            f"{_kib(dense['flash_bytes'])} | {_kib(board['flash_bytes'])} | {_kib(board['ram_bytes'])} | "
            f"{board['instructions_per_inference'] / 1e6:.2f} M | "
            f"{', '.join(f'{n} {form}' for form, n in sorted(forms.items()))} | "
            f"{'yes' if exact else 'NO'} ({board_inputs}) |")


def _weights(board: dict) -> int:
    return sum(layer.get("weight_bytes", 0) for layer in board["layers"])


def _kib(value: int) -> str:
    return f"{value / 1024:.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="lenet300,dscnn,resnet8")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1000, help="test images for the int8 accuracy")
    parser.add_argument("--board-inputs", type=int, default=2, help="inputs run in qemu")
    args = parser.parse_args()
    missing = mcu.toolchain_missing()
    if missing:
        raise SystemExit(missing)
    torch.manual_seed(0)
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for label, configs in variants(args.sparsity, args.clusters).items():
                start = time.perf_counter()
                row = bench_one(model, label, configs, Path(tmp), args.samples, args.board_inputs)
                print(row, f"<!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
