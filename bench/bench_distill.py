"""Knowledge distillation: a small student trained alone vs distilled, same training budget.

    python bench/bench_distill.py [--seeds 0 1 2] [--epochs 30] [--students tiny_cnn small_mlp]

The teacher is the zoo's pretrained ResNet-8 on the MNIST subset; each student has at least
4x fewer parameters. "Alone" and "distilled" run the same loop (edgeopt's distillation trainer:
same epochs, learning rate, seed, 10 % of the train split held out to keep the best epoch);
"alone" sets alpha=0 (labels only), so the teacher's soft targets are the only difference.
Accuracy is top-1 on the test split in ONNX Runtime, averaged over seeds. Gap closed =
(distilled - alone) / (teacher - alone). Target: at least half of the gap closed (Hinton et
al. 2015: 146 -> 74 test errors against a 67-error teacher on MNIST, 91 % closed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import ort_accuracy
from torch import nn


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """About 9k parameters: two strided 3x3 convs and a linear classifier (28x28 input)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes))


def small_mlp(num_classes: int = 10) -> nn.Module:
    """784-32-10: about 25k parameters, a tenth of LeNet-300-100."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))


STUDENTS = {"tiny_cnn": tiny_cnn, "small_mlp": small_mlp}
TEACHER = "resnet8"
TEMPERATURE, ALPHA, LR = 4.0, 0.9, 3e-3


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_pair(teacher_name: str, make_student, splits, seeds: list[int], epochs: int,
             folder: Path) -> dict[str, float]:
    import edgeopt as eo

    teacher = eo.zoo.pretrained(teacher_name, "mnist5k", progress=False)
    results: dict[str, list[float]] = {"alone": [], "distilled": []}
    name = make_student.__name__
    for seed in seeds:
        torch.manual_seed(seed)
        student = make_student()
        for label, alpha in (("alone", 0.0), ("distilled", ALPHA)):
            config = eo.DistillConfig(temperature=TEMPERATURE, alpha=alpha, epochs=epochs, lr=LR,
                                      seed=seed)
            trained = eo.apply(student, config, data=splits.train, teacher=teacher)
            results[label].append(ort_accuracy(trained, splits.test,
                                               folder / f"{name}-{label}-{seed}.onnx"))
    return {
        "teacher_acc": ort_accuracy(teacher, splits.test, folder / f"{teacher_name}.onnx"),
        "teacher_params": params(teacher), "student_params": params(make_student()),
        **{k: statistics.mean(v) for k, v in results.items()},
        **{f"{k}_runs": v for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--students", nargs="+", choices=sorted(STUDENTS), default=["tiny_cnn"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models on a shared 2-core CPU: threads only contend

    import edgeopt as eo

    splits = eo.datasets.load("mnist5k", seed=0)
    start = time.perf_counter()
    print(f"{args.epochs} epochs, lr {LR:g}, seeds {args.seeds}, T={TEMPERATURE:g}, "
          f"alpha={ALPHA:g} (alone: alpha=0)\n")
    print("| teacher (params, test acc) | student (params) | × fewer | alone | distilled | "
          "gap closed |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for student in args.students:
            teacher_name, make_student = TEACHER, STUDENTS[student]
            r = run_pair(teacher_name, make_student, splits, args.seeds, args.epochs, Path(tmp))
            closed = (r["distilled"] - r["alone"]) / max(r["teacher_acc"] - r["alone"], 1e-9)
            print(f"| {teacher_name} ({r['teacher_params']:,}, {100 * r['teacher_acc']:.1f} %) "
                  f"| {student} ({r['student_params']:,}) | "
                  f"{r['teacher_params'] / r['student_params']:.1f}× | "
                  f"{100 * r['alone']:.1f} % | {100 * r['distilled']:.1f} % | "
                  f"{100 * closed:.0f} % |", flush=True)
            runs = ", ".join(f"{100 * a:.1f}/{100 * d:.1f}"
                             for a, d in zip(r["alone_runs"], r["distilled_runs"]))
            print(f"<!-- {student} per seed alone/distilled: {runs} -->", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
