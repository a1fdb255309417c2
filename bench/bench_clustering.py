"""Weight clustering: accuracy vs number of clusters, with and without fine-tuning, and the
stored size of the codebook model.

    python bench/bench_clustering.py [--models lenet300 resnet8] [--clusters 4 8 16 32]

Every Linear / Conv weight is clustered per layer (linear centroid init, as Deep Compression
found best); biases and batch-norm parameters stay float32. "FT" trains the centroids for
`--finetune` epochs with the assignments fixed. Accuracy is top-1 on the MNIST-subset test
split in ONNX Runtime. Stored size is the compressed container of edgeopt.storage
(codebook + entropy-coded indices, everything else float32) over the model's state dict —
batch norm is folded only when deployed, so the .onnx file would not show the sharing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import ort_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "resnet8"])
    parser.add_argument("--clusters", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--finetune", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models on a shared 2-core CPU: threads only contend

    import edgeopt as eo
    from edgeopt.storage import stored_size

    splits = eo.datasets.load("mnist5k", seed=0)
    start = time.perf_counter()
    print(f"per-layer codebooks, linear init; FT = {args.finetune} epochs of centroid "
          "training at lr 5e-4; accuracy in ORT\n")
    print("| model | clusters | acc. (no FT) | acc. (FT) | stored bytes | × vs fp32 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def accuracy(model: torch.nn.Module, label: str) -> float:
            return ort_accuracy(model, splits.test, folder / f"{label}.onnx")

        for name in args.models:
            base = eo.zoo.pretrained(name, "mnist5k", progress=False)
            dense = stored_size(base, entropy_coding=False).dense_bytes
            coded = stored_size(base).total_bytes
            print(f"| {name} | fp32 | {100 * accuracy(base, name):.1f} % | - | {dense:,} "
                  f"(entropy-coded: {coded:,}) | 1.0× ({dense / coded:.2f}×) |", flush=True)
            for k in args.clusters:
                raw = eo.apply(base, eo.ClusterConfig(clusters=k))
                tuned, tuned_stats = eo.apply_with_stats(
                    base, eo.ClusterConfig(clusters=k, finetune_epochs=args.finetune, lr=5e-4),
                    data=splits.train)
                size = tuned_stats["cluster"].stored_bytes
                print(f"| {name} | {k} | {100 * accuracy(raw, f'{name}-{k}'):.1f} % | "
                      f"{100 * accuracy(tuned, f'{name}-{k}-ft'):.1f} % | {size:,} | "
                      f"{dense / size:.1f}× |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
