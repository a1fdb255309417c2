"""Deep Compression (Han et al. 2016) as an edgeopt recipe: prune -> fine-tune -> cluster (or
int8-quantize) -> entropy-code, on LeNet-300-100 / the MNIST subset.

    python bench/bench_deep_compression.py [--out runs/bench-deep-compression]

The pipeline is an ordinary recipe (RECIPE below; the same mapping works as YAML with
`edgeopt optimize`). Accuracy is measured by the recipe runner in ONNX Runtime on the test
split. Stored sizes come from `edgeopt.storage` applied to the exported .onnx
initializers: "packed" keeps every stream plain (bitmap of nonzeros, bit-packed cluster
indices, codebook, raw values), "entropy-coded" additionally LZMA-codes each stream (the
Huffman stage of the paper). Ratios are against the same weights stored as dense float32.
Published: 40x with no accuracy loss. Target here: >= 50x with <= 0.3 points lost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

RECIPE = {
    "model": "lenet300",
    "data": "mnist5k",
    "seed": 0,
    "stages": [
        # magnitude pruning to 96 % zeros, ranked over all layers, in 3 rounds of fine-tuning
        {"name": "pruned", "technique": "prune",
         "config": {"sparsity": 0.96, "scope": "global", "schedule": "iterative", "steps": 3,
                    "finetune_epochs": 4, "lr": 1e-3}},
        # 16 shared values per layer (4-bit indices), zeros kept out, centroids fine-tuned
        {"name": "clustered", "technique": "cluster",
         "config": {"clusters": 16, "init": "linear", "finetune_epochs": 3}},
        # the other branch of the paper's step 2: int8 weights and activations instead
        {"name": "int8", "technique": "quantize", "from": "pruned"},
    ],
    "measure": {"runs": 50, "warmup": 5},
}

ROWS = [  # (stage, entropy coded?, what is stored)
    ("baseline", False, "dense float32"),
    ("pruned", False, "bitmap + float32 nonzeros"),
    ("pruned", True, "  + entropy coding"),
    ("clustered", False, "bitmap + 4-bit indices + codebook"),
    ("clustered", True, "  + entropy coding"),
    ("int8", False, "pruned, int8 QDQ (bitmap + int8 nonzeros + scales)"),
    ("int8", True, "  + entropy coding"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-deep-compression")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models on a shared 2-core CPU: threads only contend

    import edgeopt as eo
    from edgeopt.storage import stored_size

    start = time.perf_counter()
    result = eo.run_recipe(RECIPE, args.out, progress=False)
    stages = {s.name: s for s in result.stages}
    out = Path(args.out)
    reference = stored_size(out / stages["baseline"].onnx, entropy_coding=False).dense_bytes
    base_acc = stages["baseline"].accuracy
    print("| stage | stored as | accuracy (ORT) | Δ points | stored bytes | × vs fp32 |")
    print("|---|---|---|---|---|---|")
    for name, coded, what in ROWS:
        stage = stages[name]
        size = stored_size(out / stage.onnx, entropy_coding=coded).total_bytes
        if name == "baseline":
            size = reference
        drop = 100 * (stage.accuracy - base_acc)
        print(f"| {name} | {what} | {100 * stage.accuracy:.1f} % | {drop:+.1f} | {size:,} | "
              f"{reference / size:.1f}× |")
    layers = stages["clustered"].technique_stats["cluster"]["layers"]
    print("\nper layer after clustering: " + ", ".join(
        f"{e['name']} {100 * e['sparsity']:.1f} % zeros, {e['stored_bytes']:,} B"
        for e in layers))
    print(f"recipe + sizes in {time.perf_counter() - start:.0f} s; run folder: {out}")


if __name__ == "__main__":
    main()
