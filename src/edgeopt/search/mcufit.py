"""Fit the MCU instruction table (edgeopt.search.mcu) on counts measured once in qemu.

    python -m edgeopt.search.mcufit --target cortex-m4            # fit, cache for this machine
    python -m edgeopt.search.mcufit --target cortex-m4 --default  # and rewrite the packaged table

The training set is random synthetic networks (conv k×k, pointwise, depthwise, residual adds,
max pools, a mean, fully connected layers; random widths, kernels, strides, resolutions and 4 / 8-bit
weights), none of them a zoo family, so that zoo architectures stay held out for validation
(`validate`, bench/bench_search.py mcu). Each network is quantized with random calibration
data, lowered, built for the target and run on its emulated board once; every layer's count
(model.c's EDGEOPT_LAYER_END) is one row of its variant's non-negative least-squares fit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.search.mcu import DEFAULT_TABLE, FEATURES, cache_file, ir_layers, predict
from edgeopt.search.space import Policy, with_factors

# ---------------------------------------------------------------- measuring

def measure(model: nn.Module, example: torch.Tensor, bits: dict[str, int], target: str,
            seed: int = 0) -> dict[str, Any]:
    """Quantize `model` (weight `bits` per layer, 8 where absent; random calibration), lower it,
    run it once on `target`'s board: the IR's layers with their measured counts, and the total."""
    import edgeopt as eo
    from edgeopt.deploy import reference
    from edgeopt.deploy.c.compress import choose
    from edgeopt.deploy.lower import lower_model
    from edgeopt.deploy.stage import run_graph_on_target
    from edgeopt.deploy.targets import get_target

    generator = torch.Generator().manual_seed(seed)
    calib = torch.randn(16, *example.shape[1:], generator=generator)
    overrides = {p: eo.QuantSpec(bits=v) for k, v in bits.items() if v != 8
                 for p in with_factors(k)}  # a factor (`fc.1`) takes the width of `fc`
    config = eo.QuantConfig(weight_overrides=overrides, calibration_samples=16)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        quantized = eo.apply(model.eval(), config, data=[(calib, None)])
    graph = lower_model(quantized, example, calib)
    x_int8 = reference.quantize_input(graph, calib[:1].numpy()).reshape(1, -1)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_graph_on_target(graph, get_target(target), x_int8, Path(tmp))
    counts = [layer.get("instructions") for layer in run["layers"]]
    if None in counts:
        raise RuntimeError("the board reported no per-layer counts")
    return {"layers": ir_layers(graph, choose(graph)), "counts": counts,
            "total": run["instructions_per_inference"]}


# ---------------------------------------------------------------- the training set

class _Net(nn.Module):
    """A random stack of the blocks the C back end has kernels for."""

    def __init__(self, rng: random.Random, channels: int, size: int) -> None:
        super().__init__()
        blocks, c = [], channels
        for index in range(rng.randint(2, 5)):  # a conv first: the input's quantizer feeds it
            kind = (rng.choice(("conv", "conv", "separable", "separable", "residual", "pool"))
                    if index else "conv")
            width = rng.choice((4, 8, 12, 16, 24, 32, 48, 64))
            kernel = rng.choice((1, 3, 3, 5, 7)) if kind == "conv" else rng.choice((3, 5))
            stride = 2 if size >= 12 and rng.random() < 0.35 else 1
            if kind == "pool" and size >= 4:
                blocks.append(nn.MaxPool2d(2))  # (edgeopt's quantizer requantizes average pools)
                size //= 2
                continue
            if kind == "residual":
                blocks.append(_Residual(c, kernel))
                continue
            if kind == "separable":
                blocks += [nn.Conv2d(c, c, kernel, stride, kernel // 2, groups=c, bias=False),
                           nn.BatchNorm2d(c), nn.ReLU()]
                kernel = 1
            blocks += [nn.Conv2d(c, width, kernel, stride if kind == "conv" else 1,
                                 kernel // 2), nn.ReLU()]
            size = (size - 1) // stride + 1  # odd kernels, padding kernel // 2
            c = width
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = []
        if rng.random() < 0.5:
            head += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            flat = c
        else:
            head.append(nn.Flatten())
            flat = c * size * size
        hidden = rng.choice((0, 32, 64, 128))
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU()]
            flat = hidden
        self.head = nn.Sequential(*head, nn.Linear(flat, rng.choice((2, 10, 12))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Residual(nn.Module):
    def __init__(self, c: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


def random_net(rng: random.Random, max_macs: float = 4e6, max_weights: int = 200_000
               ) -> tuple[nn.Module, torch.Tensor, dict[str, int]]:
    """A synthetic network small enough to run quickly in qemu, and random 4 / 8-bit weights
    (at most `max_weights`, and fully connected layers under 32768 inputs: the C's layer
    descriptor holds sizes as int16)."""
    from edgeopt.profile import profile

    while True:
        channels, size = rng.choice((1, 1, 3)), rng.choice((8, 12, 16, 20, 24, 28, 32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.randrange(1 << 30))
            net = _Net(rng, channels, size).eval()
        example = torch.randn(1, channels, size, size)
        try:
            macs = profile(net, example).macs
        except RuntimeError:  # a shape that does not fit (flattened size): draw again
            continue
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        small = (sum(p.numel() for p in net.parameters()) <= max_weights
                 and all(m.in_features < 32768 for m in linears))
        if macs <= max_macs and small:
            bits = {n: rng.choice((4, 8)) for n, m in net.named_modules()
                    if isinstance(m, nn.Conv2d | nn.Linear)}
            return net, example, bits


def training_rows(target: str, count: int, seed: int = 0, log: Callable[[str], None] = print
                  ) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        net, example, bits = random_net(rng)
        try:
            rows.append(measure(net, example, bits, target, seed=index))
        except Exception as exc:  # noqa: BLE001 - a net the back end refuses is skipped, not fatal
            log(f"net {index}: skipped ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        log(f"net {index}: {len(rows[-1]['layers'])} layers, {rows[-1]['total']:,} instructions")
    return rows


# ---------------------------------------------------------------- fitting

def fit(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, non-negative coefficients of FEATURES by least squares on relative error
    (small layers count, not only the largest); `call`: the mean of what the layers leave out."""
    from scipy.optimize import nnls

    by_variant: dict[str, tuple[list[list[float]], list[float]]] = {}
    leftover = []
    for row in rows:
        for layer, count in zip(row["layers"], row["counts"]):
            xs, ys = by_variant.setdefault(layer.variant, ([], []))
            xs.append(layer.features())
            ys.append(float(count))
        leftover.append(row["total"] - sum(row["counts"]))
    coefficients = {}
    for variant, (xs, ys) in sorted(by_variant.items()):
        a, y = np.array(xs), np.array(ys)
        weight = 1.0 / np.maximum(y, 1.0)
        scale = np.maximum(np.abs(a).max(axis=0), 1.0)  # columns of like size for nnls
        solution, _ = nnls(a * weight[:, None] / scale, y * weight)
        coefficients[variant] = [float(v) for v in solution / scale]
    return {"features": list(FEATURES), "coefficients": coefficients,
            "call": float(statistics.median(leftover)) if leftover else 0.0,
            "samples": {v: len(ys) for v, (_, ys) in sorted(by_variant.items())}}


def fit_target(target: str, nets: int = 40, seed: int = 0, default: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure `nets` training networks on `target`, fit, cache (and with `default`, write the
    packaged table's entry for `target`)."""
    start = time.perf_counter()
    rows = training_rows(target, nets, seed, log)
    log(f"measured {len(rows)} nets in {time.perf_counter() - start:.0f} s")
    return save_table(target, rows, default, log)


def save_table(target: str, rows: list[dict[str, Any]], default: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit `rows`, cache the table for this machine (and with `default`, the packaged one)."""
    from edgeopt.atomic import write_text
    from edgeopt.search.mcu import sources_hash

    table = {**fit(rows), "target": target, "sources": sources_hash(), "nets": len(rows)}
    table["layer_error_pct"] = layer_error(rows, table)
    path = cache_file(target, table["sources"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(table, indent=1, sort_keys=True))
    log(f"table: {path}")
    if default:
        try:
            packaged = json.loads(DEFAULT_TABLE.read_text())
        except (OSError, ValueError):
            packaged = {}
        packaged[target] = table
        write_text(DEFAULT_TABLE, json.dumps(packaged, indent=1, sort_keys=True) + "\n")
        log(f"packaged table: {DEFAULT_TABLE}")
    return table


def layer_error(rows: list[dict[str, Any]], table: dict[str, Any]) -> float:
    """Median absolute relative error of per-layer predictions (in-sample), in percent."""
    errors = [abs(predict({**table, "call": 0.0}, [layer]) - count) / max(count, 1)
              for row in rows for layer, count in zip(row["layers"], row["counts"])]
    return round(100.0 * float(np.median(errors)), 2)


# ---------------------------------------------------------------- held-out validation

def held_out_models(per_family: int, seed: int = 1) -> list[tuple[str, nn.Module, torch.Tensor,
                                                                  Policy]]:
    """Architecture-level candidates of the zoo families (width / depth / kernel / resolution,
    uniform int8 and uniform 4-bit) and random policies (bits, keep ratios, low-rank energy) of
    zoo models."""
    import edgeopt as eo
    from edgeopt.search.architecture import FAMILIES, build, candidate_spaces, resized_shape
    from edgeopt.search.cost import shaped_copy
    from edgeopt.search.space import build_space

    rng = random.Random(seed)
    out = []
    natives = {"dscnn": (1, 28, 28), "resnet8": (1, 28, 28), "mobilenetv1_vww": (3, 48, 48)}
    for family in sorted(FAMILIES):
        native = natives.get(family, (1, 28, 28))
        spaces = candidate_spaces(family, native)
        for _ in range(per_family):
            arch = rng.choice(spaces).sample(rng)
            model = build(**arch.to_dict(), input_shape=list(native), num_classes=10).eval()
            example = torch.randn(1, *resized_shape(native, arch.resolution))
            layers = [n for n, m in model.named_modules()
                      if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
            policy = Policy(bits=dict.fromkeys(layers, rng.choice((4, 8))), keep={})
            out.append((f"{family} {arch.label()}", model, example, policy))
    for name, shape in (("lenet5", (1, 28, 28)), ("tcn1d", (6, 100)), ("lenet300", (1, 28, 28)),
                        ("ds_cnn_kws", (1, 49, 10))):
        base = eo.zoo.create(name, shape, 10).eval()
        example = torch.randn(1, *shape)
        space = build_space(base, example, "mcu")
        for _ in range(max(1, per_family // 2)):
            policy = Policy(bits={n: rng.choice((4, 8)) for n in space.layers},
                            keep={g: rng.choice(space.keep_choices) for g in space.groups},
                            energy=rng.choice(space.energy_choices))
            model = shaped_copy(base, example, policy)
            out.append((f"{name} {policy.label()}", model, example, policy))
    return out


def validate(target: str, table: dict[str, Any], per_family: int = 4,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Predicted (from the float model's shapes, as a search does) against measured
    instructions of held-out models; also the prediction from the lowered graph's layers."""
    from edgeopt.search.mcu import torch_layers

    rows = []
    for index, (label, model, example, policy) in enumerate(held_out_models(per_family)):
        predicted = predict(table, torch_layers(model, example, policy.bits))
        try:
            measured = measure(model, example, policy.bits, target, seed=index)
        except Exception as exc:  # noqa: BLE001 - reported, the rest still scored
            log(f"{label}: not measured ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        rows.append({"model": label, "predicted": predicted, "measured": measured["total"],
                     "predicted_ir": predict(table, measured["layers"]),
                     "layers_torch": len(torch_layers(model, example, policy.bits)),
                     "layers_ir": len(measured["layers"])})
        log(json.dumps(rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the MCU instruction table in qemu.")
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--nets", type=int, default=40, help="synthetic training networks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default", action="store_true",
                        help="also write the table shipped in the package")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fit_target(args.target, args.nets, args.seed, args.default)


if __name__ == "__main__":
    main()
