"""Quantizing a decoder bigger than memory: peak RSS and time, streamed vs in memory.

    .venv/bin/python bench/bench_big.py                 # ~1.1B-parameter Llama (TinyLlama shape)
    .venv/bin/python bench/bench_big.py --layers 2      # quick check

A random-weight Llama is built from a `transformers` config on the meta device and written to
safetensors one block per shard (never two copies in memory). Each measured run is a child
process; its peak RSS is the kernel's ru_maxrss for that child (os.wait4). The in-memory path
(load everything, quantize, export one ONNX file) runs on a smaller model of the same width,
`--memory-layers` blocks, because the whole 1.1B model in float plus the exporter's copies does
not fit this 24 GiB machine next to other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

WIDTH = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=2048)
CONFIGS = {
    "rtn-int4": dict(weights=dict(bits=4, granularity="per_group", group_size=128)),
    "rtn-int8": dict(weights=dict(bits=8, granularity="per_channel")),
    "gptq-int4": dict(weights=dict(bits=4, granularity="per_group", group_size=128),
                      rounding="gptq"),
    "awq-int4": dict(weights=dict(bits=4, granularity="per_group", group_size=128), awq=True),
}


def make_checkpoint(folder: Path, layers: int) -> int:
    """A random Llama in `folder`, one safetensors shard per block; returns the fp32 bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(num_hidden_layers=layers, **WIDTH)
    config.save_pretrained(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    pieces = [("model.embed_tokens", model.model.embed_tokens)]
    pieces += [(f"model.layers.{i}", block) for i, block in enumerate(model.model.layers)]
    pieces += [("model.norm", model.model.norm), ("lm_head", model.lm_head)]
    generator = torch.Generator().manual_seed(0)
    total = 0
    for index, (prefix, module) in enumerate(pieces):
        state = {}
        for key, meta in module.state_dict().items():
            if key.endswith("norm.weight") or key == "weight" and prefix == "model.norm":
                value = torch.ones(meta.shape)
            else:
                value = torch.randn(meta.shape, generator=generator) * config.initializer_range
            state[f"{prefix}.{key}"] = value
            total += value.numel() * 4
        save_file(state, str(folder / f"model-{index:05d}.safetensors"))
        del state
    return total


def child(mode: str, folder: str, out: str, name: str, calib: str) -> None:
    """One measured run (in its own process)."""
    import edgeopt as eo
    from edgeopt.quantization.streaming import SafetensorsReader, quantize_decoder

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    options = dict(CONFIGS[name])
    config = eo.QuantConfig(method="weight_only", activations=None,
                            **dict(options, weights=eo.QuantSpec(**options["weights"])))
    ids = torch.randint(0, WIDTH["vocab_size"], tuple(map(int, calib.split("x"))),
                        generator=torch.Generator().manual_seed(0))
    needs = config.awq or config.rounding.value == "gptq"
    start = time.perf_counter()
    if mode == "stream":
        eo.quantize_checkpoint(folder, out, config, calibration=ids if needs else None)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(folder, local_files_only=True),
                attn_implementation="sdpa")
        SafetensorsReader(Path(folder)).load("", model)  # everything, in float
        quantize_decoder(model, config, ids if needs else None)
        eo.export_onnx(_Logits(model), Path(out) / "model.onnx", ids[:1], check=False)
    print(json.dumps({"seconds": time.perf_counter() - start}))


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=False).logits


def measure(mode: str, folder: Path, name: str, calib: str) -> dict:
    with tempfile.TemporaryDirectory(dir=folder.parent) as out:
        proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(folder), out,
                                 name, calib], stdout=subprocess.PIPE, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{mode} {name} failed (status {status})")
        files = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    result = json.loads(stdout.strip().splitlines()[-1])
    return dict(result, peak_rss=usage.ru_maxrss * 1024, onnx_bytes=files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--memory-layers", type=int, default=4)
    parser.add_argument("--configs", default="rtn-int4")
    parser.add_argument("--calibration", default="8x128", help="samples x tokens")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="edgeopt-big-"))
    rows = []
    for layers, modes in ((args.layers, ("stream",)),
                          (args.memory_layers, ("stream", "memory"))):
        folder = root / f"llama-{layers}"
        fp32 = make_checkpoint(folder, layers)
        params = fp32 // 4
        for name in args.configs.split(","):
            for mode in modes:
                r = measure(mode, folder, name, args.calibration)
                rows.append((f"{params / 1e9:.2f}B ({layers} blocks)", name, mode, fp32, r))
                print(_row(*rows[-1]), flush=True)
        for shard in folder.glob("*.safetensors"):
            shard.unlink()
    print("\n| model | method | path | fp32 checkpoint | peak RSS | RSS / fp32 | time | ONNX + data |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(*row))


def _row(model: str, name: str, mode: str, fp32: int, r: dict) -> str:
    return (f"| {model} | {name} | {'streamed' if mode == 'stream' else 'in memory'} | "
            f"{fp32 / 2**30:.2f} GiB | {r['peak_rss'] / 2**30:.2f} GiB | "
            f"{r['peak_rss'] / fp32:.0%} | {r['seconds']:.0f} s | {r['onnx_bytes'] / 2**20:.0f} MiB |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
    else:
        main()
