"""Advanced post-training quantization on the conv zoo and on small transformers.

Conv zoo (trained models, accuracy measured in ONNX Runtime on the test split):
  1. W4A8 and W8A8: plain PTQ, + cross-layer equalization, + bias correction, + AdaRound,
     data-free (inputs synthesized from batch-norm statistics; CLE + analytical bias correction)
     and QAT (1 epoch) - accuracy and time to quantize.
  2. Mixed precision (2/4/8-bit candidates) at the packed size of uniform 4-bit, and (4/8) at
     the midpoint between uniform 4 and 8-bit, against uniform 4-bit and 8-bit.
  3. Numeric formats (fp16, bf16, fp8 E4M3/E5M2, TF32; weights and layer inputs) and
     non-uniform weights (log2 and k-means, 4 bits).
Transformers (`transformers` ViT and BERT with random weights; a few LayerNorm channels scaled
x30 to create the activation outliers real trained transformers have): W8A8 with and without
SmoothQuant, W4 weight-only (groups of 32, MatMulNBits) RTN vs GPTQ vs AWQ - output SQNR against fp32
and ONNX Runtime latency (batch 1, 1 thread, interleaved medians).

    .venv/bin/python bench/bench_quant_advanced.py [--models lenet5,dscnn] [--skip transformers]

Runs single-threaded (torch.set_num_threads(1)): on a shared 2-core machine extra threads
made AdaRound 10x slower, not faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import edgeopt as eo
from edgeopt.errors import ModelError
from edgeopt.quantization.config import AdvancedQuantConfig, MixedPrecision
from edgeopt.quantization.primitives import sqnr_db
from edgeopt.runtime.measure import compare_latency, measure

CONV = [("lenet5", "mnist5k"), ("dscnn", "mnist5k"), ("resnet8", "mnist5k"),
        ("tcn1d", "basic-motions")]
CALIBRATION = 256


def conv_configs(bits: int, shape: tuple[int, ...], adaround_iterations: int
                 ) -> dict[str, tuple[eo.QuantConfig, bool]]:
    """label -> (config, uses real data)."""
    w = eo.QuantSpec(bits=bits)
    adv = AdvancedQuantConfig(adaround_iterations=adaround_iterations, input_shape=shape,
                              data_free_samples=128, data_free_steps=100)
    base = eo.QuantConfig(weights=w, calibration_samples=CALIBRATION, advanced=adv)
    cle = dataclasses.replace(base, equalization=True)
    bc = dataclasses.replace(cle, bias_correction=True)
    return {
        "PTQ": (base, True),
        "+CLE": (cle, True),
        "+CLE+BC": (bc, True),
        "+CLE+BC+AdaRound": (dataclasses.replace(bc, rounding="adaround"), True),
        "data-free (CLE+BC)": (dataclasses.replace(bc, data_free=True), False),
        "QAT 1 epoch": (dataclasses.replace(base, method="qat", epochs=1, lr=1e-4), True),
    }


class Case:
    """One trained zoo model with its data, fp32 reference and a scratch folder."""

    def __init__(self, model_name: str, data_name: str, folder: Path) -> None:
        self.name = model_name
        self.splits = eo.datasets.load(data_name, seed=0)
        self.model = eo.zoo.pretrained(model_name, data_name).eval()
        self.folder = folder
        n = min(CALIBRATION, len(self.splits.train))
        self.calib = torch.stack([self.splits.train[i][0] for i in range(n)])
        self.train = self.splits.train
        self.example = self.calib[:1]
        self.fp32 = self.accuracy(self.model, "fp32")

    def accuracy(self, model: torch.nn.Module, tag: str) -> float:
        path = eo.export_onnx(model, self.folder / f"{self.name}_{tag}.onnx", self.example)
        return 100 * measure(path, self.splits.test, threads=1, runs=2, warmup=1).accuracy

    def quantize(self, config: eo.QuantConfig, real_data: bool) -> tuple[Any, Any, float]:
        data = self.train if config.method.value == "qat" else [self.calib]
        start = time.perf_counter()
        q, stats = eo.apply_with_stats(self.model, config, data=data if real_data else None)
        return q, stats["quant"], time.perf_counter() - start


def bench_methods(case: Case, adaround_iterations: int) -> list[str]:
    rows = []
    for bits in (4, 8):
        configs = conv_configs(bits, tuple(case.calib.shape[1:]), adaround_iterations)
        for label, (config, real) in configs.items():
            try:
                q, _, seconds = case.quantize(config, real)
            except ModelError as exc:  # data-free on a model without batch norm
                rows.append(f"| {case.name} | W{bits}A8 | {label} | n/a: {str(exc)[:48]}... | "
                            "| |")
                continue
            acc = case.accuracy(q, f"w{bits}_{label}")
            rows.append(f"| {case.name} | W{bits}A8 | {label} | {acc:.2f} | "
                        f"{acc - case.fp32:+.2f} | {seconds:.1f} |")
            print(rows[-1], flush=True)
    return rows


def packed_size(stats: Any) -> int:
    plan = stats.methods.get("mixed_precision")
    return plan["size_bytes"] if plan else -1


def bench_mixed(case: Case) -> list[str]:
    base = eo.QuantConfig(equalization=True, bias_correction=True,
                          calibration_samples=CALIBRATION)
    _, probe_stats = eo.apply_with_stats(case.model, dataclasses.replace(
        base, mixed_precision=MixedPrecision(size_budget_bytes=10**12, candidates=(2, 4, 8))),
        data=[case.calib])
    sizes = probe_stats["quant"].methods["mixed_precision"][
        "uniform_size_bytes"]
    middle = (sizes["4"] + sizes["8"]) // 2
    runs = {
        "uniform W4A8": (dataclasses.replace(base, weights=eo.QuantSpec(bits=4)), sizes["4"]),
        "uniform W8A8": (base, sizes["8"]),
        "mixed 2/4/8 @ uniform-4 size": (dataclasses.replace(base, mixed_precision=MixedPrecision(
            size_budget_bytes=sizes["4"], candidates=(2, 4, 8))), None),
        "mixed 4/8 @ midpoint size": (dataclasses.replace(base, mixed_precision=MixedPrecision(
            size_budget_bytes=middle, candidates=(4, 8))), None),
    }
    rows = []
    for label, (config, size) in runs.items():
        q, q_stats, seconds = case.quantize(config, True)
        acc = case.accuracy(q, f"mp_{label.split()[0]}_{len(rows)}")
        size = size if size is not None else packed_size(q_stats)
        bits = ""
        plan = q_stats.methods.get("mixed_precision")
        if plan:
            bits = " ".join(str(b) for b in plan["assignment"].values())
        rows.append(f"| {case.name} | {label} | {acc:.2f} | {size / 1024:.1f} | {bits} | "
                    f"{seconds:.1f} |")
        print(rows[-1], flush=True)
    return rows


def bench_formats(case: Case) -> list[str]:
    configs = {f: eo.QuantConfig(weights=eo.QuantSpec(dtype=f))
               for f in ("fp16", "bf16", "tf32", "fp8_e4m3", "fp8_e5m2")}
    configs["log2 W4A8"] = eo.QuantConfig(weights=eo.QuantSpec(bits=4, levels="log2"))
    configs["k-means 4-bit (LUT)"] = eo.QuantConfig(weights=eo.QuantSpec(bits=4, levels="kmeans"))
    row = [f"| {case.name} | {case.fp32:.2f}"]
    for label, config in configs.items():
        q, q_stats, _ = case.quantize(config, True)
        stored = sum(r.get("stored_bytes", 0) for r in q_stats.layers)
        acc = case.accuracy(q, label.split()[0])
        nonuniform = label.startswith(("log2", "k-means"))
        row.append(f"{acc:.2f}" + (f" ({stored / 1024:.1f} KiB)" if nonuniform else ""))
    print(" | ".join(row) + " |", flush=True)
    return [" | ".join(row) + " |"]


def _transformers() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    import transformers as t

    class Logits(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    torch.manual_seed(0)
    vit = t.ViTForImageClassification(t.ViTConfig(
        image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, num_labels=10))
    bert = t.BertForSequenceClassification(t.BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, num_labels=10))
    models = {"ViT (4x128)": (Logits(vit), torch.randn(192, 3, 32, 32)),
              "BERT (4x128)": (Logits(bert), torch.randint(0, 1000, (192, 32)))}
    for model, _ in models.values():
        _add_outliers(model.eval())
    return models


@torch.no_grad()
def _add_outliers(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight[:4] *= 30.0  # a few outlier channels, as in trained transformers


def bench_transformers(folder: Path) -> list[str]:
    rows = []
    group = eo.QuantSpec(bits=4, granularity="per_group", group_size=32)
    configs = {
        "fp32": None,
        "W8A8": eo.QuantConfig(calibration_samples=128),
        "W8A8 + SmoothQuant": eo.QuantConfig(calibration_samples=128, smoothquant=True),
        "W4 weight-only RTN": eo.QuantConfig(method="weight_only", activations=None,
                                             weights=group, calibration_samples=128),
        "W4 weight-only GPTQ": eo.QuantConfig(method="weight_only", activations=None,
                                              weights=group, rounding="gptq",
                                              calibration_samples=128),
        "W4 weight-only AWQ": eo.QuantConfig(method="weight_only", activations=None,
                                             weights=group, awq=True, calibration_samples=128),
        "W4 weight-only AWQ + GPTQ": eo.QuantConfig(method="weight_only", activations=None,
                                                    weights=group, awq=True, rounding="gptq",
                                                    calibration_samples=128),
    }
    for name, (model, inputs) in _transformers().items():
        calib, test = inputs[:128], inputs[128:]
        with torch.no_grad():
            reference = model(test)
        paths, results = [], []
        for label, config in configs.items():
            start = time.perf_counter()
            q = model if config is None else eo.apply(model, config, data=[calib])
            seconds = time.perf_counter() - start
            with torch.no_grad():
                sqnr = sqnr_db(reference, q(test))
            paths.append(eo.export_onnx(q, folder / f"tf_{len(paths)}.onnx", test[:1]))
            results.append((label, sqnr, seconds))
        data = torch.utils.data.TensorDataset(test, torch.zeros(len(test), dtype=torch.long))
        latency = compare_latency(paths, data, threads=1, rounds=30)
        for (label, sqnr, seconds), ms, path in zip(results, latency, paths):
            sq = "inf" if label == "fp32" else f"{sqnr:.1f}"
            rows.append(f"| {name} | {label} | {sq} | {ms:.3f} | "
                        f"{path.stat().st_size / 1024:.0f} | {seconds:.1f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(m for m, _ in CONV))
    parser.add_argument("--skip", default="", help="comma list of: methods,mixed,formats,"
                        "transformers")
    parser.add_argument("--adaround-iterations", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    skip, wanted = set(args.skip.split(",")), args.models.split(",")
    tables: dict[str, list[str]] = {"methods": [], "mixed": [], "formats": []}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, data_name in CONV:
            if model_name not in wanted:
                continue
            case = Case(model_name, data_name, Path(tmp))
            print(f"# {model_name}: fp32 test accuracy {case.fp32:.2f} %", flush=True)
            if "methods" not in skip:
                tables["methods"] += bench_methods(case, args.adaround_iterations)
            if "mixed" not in skip:
                tables["mixed"] += bench_mixed(case)
            if "formats" not in skip:
                tables["formats"] += bench_formats(case)
        transformer_rows = [] if "transformers" in skip else bench_transformers(Path(tmp))
    _print_tables(tables, transformer_rows)


def _print_tables(tables: dict[str, list[str]], transformer_rows: list[str]) -> None:
    headers = {
        "methods": "| model | precision | method | test acc % | vs fp32 | quantize s |\n"
                   "|---|---|---|---|---|---|",
        "mixed": "| model | weights | test acc % | packed weights KiB | bits per layer | "
                 "quantize s |\n|---|---|---|---|---|---|",
        "formats": "| model | fp32 | fp16 | bf16 | tf32 | fp8 E4M3 | fp8 E5M2 | log2 W4A8 "
                   "(stored) | k-means 4-bit (stored) |\n|---|---|---|---|---|---|---|---|---|",
    }
    for key, rows in tables.items():
        if rows:
            print(f"\n{headers[key]}\n" + "\n".join(rows))
    if transformer_rows:
        print("\n| model | quantization | output SQNR dB | ORT ms @1t | file KiB | quantize s |\n"
              "|---|---|---|---|---|---|\n" + "\n".join(transformer_rows))


if __name__ == "__main__":
    main()
