"""Low-rank factorization on the conv zoo models: accuracy vs parameter reduction for SVD,
Tucker-2 and CP, with ONNX Runtime latency measured side by side.

    python bench/bench_lowrank.py [--models lenet5 resnet8 dscnn] [--finetune 2]

Two rank rules per method: "energy 0.9" (each layer's smallest rank keeping 90 % of the
squared weight norm) and "budget 0.5" (each layer keeps at most half of its parameters). The
final classifier is left whole. Only layers whose factors have fewer parameters AND fewer
MACs are replaced (depthwise convs never are). Accuracy is top-1 on the MNIST-subset test split in ONNX Runtime, right after the
factorization and after `--finetune` epochs of fine-tuning on the train split. Params and MACs
are whole-model figures (edgeopt.profile). Speed = baseline latency / model latency at batch 1
on 1 thread, every model of one zoo net timed interleaved (compare_latency), so > 1 is faster.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from common import ort_accuracy

METHODS = ("svd", "tucker", "cp")
SETTINGS = {"energy 0.9": {"energy": 0.9}, "budget 0.5": {"param_budget": 0.5}}
CLASSIFIER = {"lenet5": "fc3", "resnet8": "fc", "dscnn": "fc", "lenet300": "fc3"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet8", "dscnn"])
    parser.add_argument("--finetune", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models on a shared 2-core CPU: threads only contend

    import edgeopt as eo
    from edgeopt.runtime.measure import compare_latency
    from edgeopt.training import fit

    splits = eo.datasets.load("mnist5k", seed=0)
    example = splits.test[0][0][None]
    start = time.perf_counter()
    print(f"{args.finetune} fine-tuning epoch(s) at lr 5e-4; accuracy in ORT\n")
    print("| model | method | ranks by | layers replaced | params | MACs | acc. (no FT) | "
          "acc. (FT) | speed 1t |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            base = eo.zoo.pretrained(name, "mnist5k", progress=False)
            prof = eo.profile(base, example)
            paths = [folder / f"{name}.onnx"]
            rows, base_acc = [], ort_accuracy(base, splits.test, paths[0])
            exclude = (CLASSIFIER.get(name, ""),)
            for method in METHODS:
                for index, (setting, kwargs) in enumerate(SETTINGS.items()):
                    config = eo.LowRankConfig(method=method, exclude=exclude, **kwargs)
                    raw, raw_stats = eo.apply_with_stats(base, config)
                    tuned = copy.deepcopy(raw)  # what finetune_epochs=N does, kept apart here
                    if args.finetune:
                        fit(tuned, splits.train, epochs=args.finetune, lr=5e-4, progress=False)
                    accs = []
                    for label, model in (("raw", raw), ("ft", tuned)):
                        path = folder / f"{name}-{method}-{index}-{label}.onnx"
                        accs.append(ort_accuracy(model, splits.test, path))
                    paths.append(path)
                    rows.append((method, setting, tuned, accs, raw_stats["lowrank"]))
            medians = compare_latency(paths, splits.test, threads=1, rounds=40)
            print(f"| {name} | baseline | - | - | {prof.params:,} | {prof.macs:,} | "
                  f"{100 * base_acc:.1f} % | - | 1.00× |")
            for (method, setting, model, accs, stats), median in zip(rows, medians[1:]):
                p = eo.profile(model, example)
                print(f"| {name} | {method} | {setting} | {len(stats.replaced)}/"
                      f"{len(stats.layers)} | {p.params:,} ({p.params / prof.params:.2f}×) | "
                      f"{p.macs:,} ({p.macs / prof.macs:.2f}×) | {100 * accs[0]:.1f} % | "
                      f"{100 * accs[1]:.1f} % | {medians[0] / median:.2f}× |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
