"""Pruning on zoo models (mnist5k): accuracy vs sparsity, structured speedups in ONNX Runtime,
criteria side by side, a lottery ticket on LeNet-300-100, and Torch-Pruning where installed.

Every pruned model is fine-tuned on the train split with early stopping on the val split;
accuracies are top-1 on the test split in ONNX Runtime. Latency ratios come from `compare_latency` (interleaved
medians, batch 1, 1 thread). PyTorch runs on one thread (steady timings on a shared machine).

    .venv/bin/python bench/bench_pruning.py [--sections unstructured,structured,criteria,lottery]
        [--epochs 3] [--structured-epochs 8] [--rounds 200]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from common import ort_accuracy

import edgeopt as eo
from edgeopt.pruning import AdvancedPrune, prune
from edgeopt.pruning.lottery import lottery_ticket
from edgeopt.pruning.schedules import finetune
from edgeopt.pruning.stats import layer_counts
from edgeopt.runtime.measure import compare_latency
from edgeopt.storage import stored_size

QUIET = AdvancedPrune(progress=False)
STRUCTURED_LR = 3e-4  # fine-tuning a pretrained net: below its training rate


_ONNX_DIR = Path(tempfile.mkdtemp(prefix="bench_pruning_"))


def accuracy(model: torch.nn.Module, test) -> float:
    """Test top-1 in ONNX Runtime (the exported file), like every number in the README."""
    return ort_accuracy(model, test, _ONNX_DIR / f"m{len(list(_ONNX_DIR.iterdir()))}.onnx")


def _splits() -> eo.datasets.Splits:
    return eo.datasets.load("mnist5k", seed=0)


def _example(splits: eo.datasets.Splits) -> torch.Tensor:
    return splits.test[0][0].unsqueeze(0)


def _macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    return sum(r["macs"] for r in layer_counts(model, example).values())


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def unstructured(epochs: int) -> list[str]:
    """LeNet-300-100 and LeNet-5: accuracy vs weight sparsity, one-shot vs iterative."""
    splits = _splits()
    rows = [f"| model | sparsity | one-shot, no FT | one-shot + FT ({epochs} ep) | iterative "
            "(3 rounds x 1 ep) | compact size (dense = 100 %) |", "|---|---|---|---|---|---|"]
    for name in ("lenet300", "lenet5"):
        model = eo.zoo.pretrained(name, "mnist5k", progress=False)
        dense_bytes = stored_size(model).total_bytes
        rows.append(f"| {name} | 0 % | {_pct(accuracy(model, splits.test))} | | | 100 % |")
        for sparsity in (0.5, 0.8, 0.9, 0.95):
            cells = []
            for schedule, ft in (("one_shot", 0), ("one_shot", epochs), ("iterative", 1)):
                config = eo.PruneConfig(sparsity=sparsity, scope="global", schedule=schedule,
                                        finetune_epochs=ft, lr=1e-3, advanced=QUIET)
                pruned = prune(model, config, splits.train, val_data=splits.val)
                cells.append(_pct(accuracy(pruned, splits.test)))
            size = stored_size(pruned).total_bytes / dense_bytes
            rows.append(f"| {name} | {sparsity:.0%} | {' | '.join(cells)} | {size:.1%} |")
    return rows


def _tp_prune(model: torch.nn.Module, example: torch.Tensor, ratio: float) -> torch.nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[last], round_to=4)
    pruner.step()
    return model


def _finetune(model: torch.nn.Module, splits: eo.datasets.Splits, epochs: int, lr: float) -> None:
    finetune(model, splits.train, splits.val, epochs=epochs, lr=lr, patience=3, batch_size=64,
             seed=0, progress=False)


def _structured_variants(model, splits, example, epochs):
    """(label, model) for dense, edgeopt one-shot / iterative and Torch-Pruning."""
    out = [("dense", model)]
    for sparsity in (0.25, 0.4, 0.5):
        config = eo.PruneConfig(sparsity=sparsity, structure="channel", finetune_epochs=epochs,
                                lr=STRUCTURED_LR, advanced=QUIET)
        out.append((f"edgeopt {sparsity:.0%} one-shot", prune(model, config, splits.train,
                                                               val_data=splits.val)))
    config = eo.PruneConfig(sparsity=0.5, structure="channel", finetune_epochs=epochs,
                            lr=STRUCTURED_LR, advanced=AdvancedPrune(round_to=16, progress=False))
    out.append(("edgeopt 50% one-shot, widths x16", prune(model, config, splits.train,
                                                          val_data=splits.val)))
    config = eo.PruneConfig(sparsity=0.4, structure="channel", schedule="iterative", steps=2,
                            finetune_epochs=max(1, epochs // 2), lr=STRUCTURED_LR, advanced=QUIET)
    out.append(("edgeopt 40% iterative (2 rounds)", prune(model, config, splits.train,
                                                          val_data=splits.val)))
    try:
        for ratio in (0.4, 0.5):
            tp_model = _tp_prune(model, example, ratio)
            _finetune(tp_model, splits, epochs, STRUCTURED_LR)
            out.append((f"Torch-Pruning {ratio:.0%}", tp_model))
    except ImportError:
        pass
    return out


def structured(epochs: int, rounds: int) -> list[str]:
    """ResNet-8 and DS-CNN: channel pruning, fine-tuned, measured in ONNX Runtime."""
    splits = _splits()
    example = _example(splits)
    rows = ["| model | variant | test acc % | params | MACs removed | ONNX KiB | ms @1t | "
            "speedup @1t |", "|---|---|---|---|---|---|---|---|"]
    for name in ("resnet8", "dscnn"):
        model = eo.zoo.pretrained(name, "mnist5k", progress=False)
        variants = _structured_variants(model, splits, example, epochs)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [eo.export_onnx(m, Path(tmp) / f"{i}.onnx", example)
                     for i, (_, m) in enumerate(variants)]
            medians = compare_latency(paths, splits.test, threads=1, rounds=rounds)
            sizes = [p.stat().st_size for p in paths]
        base_macs = _macs(model, example)
        for (label, m), ms, size in zip(variants, medians, sizes):
            removed = 1 - _macs(m, example) / base_macs
            rows.append(f"| {name} | {label} | {_pct(accuracy(m, splits.test))} | "
                        f"{sum(p.numel() for p in m.parameters()):,} | {removed:.0%} | "
                        f"{size / 1024:.1f} | {ms:.3f} | {medians[0] / ms:.2f}x |")
    return rows


def criteria(epochs: int) -> list[str]:
    """ResNet-8, 50 % of channels, every criterion, one-shot (batch-norm statistics
    re-estimated) + the same fine-tuning."""
    splits = _splits()
    model = eo.zoo.pretrained("resnet8", "mnist5k", progress=False)
    rows = ["| criterion | test acc % before FT | after FT | seconds |", "|---|---|---|---|"]
    for criterion in ("magnitude", "l1", "taylor", "gradient", "activation", "movement",
                      "sensitivity", "random"):
        start = time.perf_counter()
        config = eo.PruneConfig(sparsity=0.5, structure="channel", criterion=criterion,
                                advanced=QUIET)
        pruned = prune(model, config, splits.train, val_data=splits.val)
        before = accuracy(pruned, splits.test)
        _finetune(pruned, splits, epochs, STRUCTURED_LR)
        rows.append(f"| {criterion} | {_pct(before)} | {_pct(accuracy(pruned, splits.test))} | "
                    f"{time.perf_counter() - start:.1f} |")
    return rows


def lottery(epochs: int) -> list[str]:
    """LeNet-300-100 from its initial weights: dense training, then tickets rewound to init
    (layer-wise magnitude pruning as in Frankle & Carbin 2019); the dense net is trained with
    the same epochs, learning rate and early stopping."""
    splits = _splits()
    torch.manual_seed(0)
    model = eo.zoo.create("lenet300", input_shape=splits.input_shape,
                          num_classes=splits.num_classes)
    dense = copy.deepcopy(model)
    finetune(dense, splits.train, splits.val, epochs=epochs, lr=1.2e-3, patience=3,
             batch_size=64, seed=0, progress=False)
    result = lottery_ticket(model, splits.train, val_data=splits.val, sparsity=0.8, rounds=4,
                            epochs=epochs, lr=1.2e-3, scope="layer", advanced=QUIET)
    table = result.to_markdown().splitlines()
    left = 100 * (1 - result.rounds[-1]["sparsity"])
    return table + ["", f"Test accuracy: dense {_pct(accuracy(dense, splits.test))} %, ticket at "
                    f"{left:.0f} % of the weights {_pct(accuracy(result.model, splits.test))} %; "
                    f"ticket compact size {stored_size(result.model).total_bytes / stored_size(dense).dense_bytes:.0%}"
                    " of the dense state dict."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="unstructured,structured,criteria,lottery")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--structured-epochs", type=int, default=8,
                        help="fine-tuning epochs of the structured section")
    parser.add_argument("--rounds", type=int, default=200, help="latency rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = {
        "unstructured": ("Unstructured: accuracy vs sparsity (global magnitude)",
                         lambda: unstructured(args.epochs)),
        "structured": ("Structured: channels removed, ONNX Runtime latency",
                       lambda: structured(args.structured_epochs, args.rounds)),
        "criteria": ("Criteria: ResNet-8, 50 % of channels",
                     lambda: criteria(args.structured_epochs)),
        "lottery": ("Lottery ticket: LeNet-300-100, rewound to init", lambda: lottery(10)),
    }
    for key in args.sections.split(","):
        title, run = sections[key]
        start = time.perf_counter()
        rows = run()
        print(f"\n### {title}\n")
        print("\n".join(rows))
        print(f"\n({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
