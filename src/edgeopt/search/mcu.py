"""Instructions (and latency) of the generated C on an MCU target, predicted per layer.

Each layer of the integer graph runs one kernel of edgeopt_kernels.c; its instruction count on
the emulated core is modelled as a non-negative combination of a few shape features,

    instructions ≈ a·MACs + b·patch + c·taps + d·outputs + e·inputs + f·pixels + g·weights + h

with one coefficient row per kernel variant (`variant`: conv k×k / pointwise / depthwise / fully
connected, each with 8-bit or 4-bit weights; pools, mean, add, reshape, concat). patch is the
input bytes a conv gathers per output pixel summed over pixels (MACs / out channels), taps the
output elements times the kernel taps (MACs / in channels), pixels the output positions. The
rows are fitted (edgeopt.search.mcufit) on per-layer counts measured once in qemu and looked
up here: the user cache (this target, these C sources) first, else the table shipped with the
package. Layers come from the integer IR (`ir_layers`, for fitting and checking) or from a
float model's shapes (`torch_layers`, what a search costs without exporting anything).

latency_ms = instructions × cycles per instruction / clock (the target's, deploy.targets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.search.space import Policy, layer_bits

FEATURES = ("macs", "patch", "taps", "outputs", "inputs", "pixels", "weights", "calls")
DEFAULT_TABLE = Path(__file__).with_name("mcu_table.json")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One kernel call of the generated C and its shape features."""

    variant: str
    macs: int
    patch: int
    taps: int
    outputs: int
    inputs: int
    pixels: int
    weights: int

    def features(self) -> list[float]:
        return [float(getattr(self, k)) for k in FEATURES[:-1]] + [1.0]


def _linear_layer(kind: str, bits: int, kernel: tuple[int, int], pad: bool, in_shape: tuple,
                  out_shape: tuple, weights: int, form: str = "") -> Layer:
    """A conv / depthwise / fully connected layer from its NHWC shapes (batch dropped)."""
    *in_hw, cin = in_shape
    *out_hw, cout = out_shape
    pixels, taps = math.prod(out_hw), kernel[0] * kernel[1]
    per_out = taps * (1 if kind == "depthwise" else cin)
    if kind == "conv2d" and taps == 1 and not pad:
        kind = "pointwise"
    variant = f"{kind}/{form or ('int4' if bits == 4 else 'int8')}"
    return Layer(variant, pixels * cout * per_out, pixels * per_out, pixels * cout * taps,
                 pixels * cout, math.prod(in_hw) * cin, pixels, weights)


def _simple(variant: str, in_size: int, out_size: int, pixels: int, taps: int = 1) -> Layer:
    return Layer(variant, out_size * taps, 0, out_size * taps, out_size, in_size, pixels, 0)


# ---------------------------------------------------------------- from the integer IR

def ir_layers(graph: Any, forms: dict[str, Any] | None = None) -> list[Layer]:
    """One Layer per op of an IR graph (edgeopt.deploy.ir), in the C's order; `forms`: the
    compressed weight forms build_c chose (compress.choose), keyed by weight tensor."""
    forms = forms or {}
    layers = []
    for op in graph.ops:
        x, out = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            w = graph.tensors[op.inputs[1]]
            form = forms[op.inputs[1]].form if op.inputs[1] in forms else ""
            bits = 4 if w.dtype == "int4" else 8
            if op.kind == "fully_connected":
                layers.append(_linear_layer("fully_connected", bits, (1, 1), False, (x.size,),
                                            (out.size,), w.size, form))
                continue
            kind = "conv2d" if op.kind == "conv2d" else "depthwise"
            layers.append(_linear_layer(kind, bits, tuple(op.attrs["kernel"]),
                                        any(op.attrs["padding"]), x.shape[1:], out.shape[1:],
                                        w.size, form))
        elif op.kind in ("max_pool2d", "avg_pool2d"):
            kh, kw = op.attrs["kernel"]
            layers.append(_simple(op.kind, x.size, out.size, out.size // out.shape[-1], kh * kw))
        elif op.kind == "mean":
            layers.append(_simple("mean", x.size, out.size, 1, x.size // max(out.size, 1)))
        else:  # add, reshape, concat: elementwise or copies
            layers.append(_simple(op.kind, sum(graph.tensors[n].size for n in op.inputs),
                                  out.size, 1))
    return layers


# ---------------------------------------------------------------- from a float model's shapes

def _nhwc(shape: torch.Size) -> tuple[int, ...]:
    """A tensor's shape without the batch, channels last, as the IR lays it out."""
    dims = tuple(shape[1:])
    if len(dims) == 3:
        return (dims[1], dims[2], dims[0])
    if len(dims) == 2:  # (C, T) series: (1, T, C) in the IR
        return (1, dims[1], dims[0])
    return dims


def _module_layer(module: nn.Module, bits: int, x: tuple, y: tuple) -> Layer | None:
    if isinstance(module, nn.Flatten) and len(x) != len(y):
        return _simple("reshape", math.prod(x), math.prod(y), 1)
    if isinstance(module, nn.Linear):
        return _linear_layer("fully_connected", bits, (1, 1), False, (math.prod(x),),
                             (math.prod(y),), module.weight.numel())
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        kernel = tuple(module.kernel_size)
        kernel = (1, kernel[0]) if len(kernel) == 1 else kernel
        groups, cin = module.groups, module.in_channels
        kind = "conv2d" if groups == 1 else "depthwise"
        if kind == "depthwise" and not (groups == cin and module.weight.shape[1] == 1):
            return None  # grouped convolutions do not lower to the C back end
        padding = module.padding if not isinstance(module.padding, str) else (1,)
        return _linear_layer(kind, bits, kernel, any(int(p) for p in padding), x, y,
                             module.weight.numel())
    pool = {nn.MaxPool1d: "max_pool2d", nn.MaxPool2d: "max_pool2d", nn.AvgPool1d: "avg_pool2d",
            nn.AvgPool2d: "avg_pool2d"}.get(type(module))
    if pool is not None:
        k = module.kernel_size
        k = (k, k) if isinstance(k, int) else tuple(k)
        taps = k[0] * (k[1] if isinstance(module, nn.MaxPool2d | nn.AvgPool2d) else 1)
        return _simple(pool, math.prod(x), math.prod(y), math.prod(y) // y[-1], taps)
    if isinstance(module, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d) and math.prod(y) == y[-1]:
        return _simple("mean", math.prod(x), math.prod(y), 1, math.prod(x) // y[-1])
    return None


_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_RESHAPES = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}


def torch_layers(model: nn.Module, example: torch.Tensor, bits: dict[str, int],
                 traced: Any = None) -> list[Layer]:
    """The Layers export_c would emit for `model` with weight `bits` per Conv / Linear layer
    (8 where absent), from its fx graph's shapes: batch norm and activations fold into the
    layer before them, as the lowering does. `traced` (cost.shaped_trace of the model) spares
    tracing it again."""
    from edgeopt.search.cost import shaped_trace

    traced = traced if traced is not None else shaped_trace(model, example)
    modules = dict(traced.named_modules())
    layers = []
    for node in traced.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape") or not node.all_input_nodes:
            continue
        source = node.all_input_nodes[0].meta.get("tensor_meta")
        x = _nhwc(source.shape) if source is not None and hasattr(source, "shape") else ()
        y = _nhwc(meta.shape)
        if node.op == "call_module":
            layer = _module_layer(modules[node.target], layer_bits(bits, str(node.target)), x, y)
        elif node.target in _ADDS and len(node.all_input_nodes) == 2:
            layer = _simple("add", 2 * math.prod(y), math.prod(y), 1)
        elif node.target in _RESHAPES and len(x) != len(y):
            layer = _simple("reshape", math.prod(x), math.prod(y), 1)
        elif node.target is torch.cat:
            layer = _simple("concat", math.prod(y), math.prod(y), 1)
        else:
            layer = None
        if layer is not None:
            layers.append(layer)
    return layers


# ---------------------------------------------------------------- the fitted table

def sources_hash() -> str:
    """The C the counts depend on: the kernels and the emitter (not the x86-only header, which
    an Arm build does not compile)."""
    from edgeopt.deploy.c import RUNTIME, emit

    paths = [p for p in sorted(RUNTIME.glob("*.[ch]")) if p.name != "edgeopt_x86.h"]
    paths.append(Path(emit.__file__))
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_file(target: str, digest: str | None = None) -> Path:
    from platformdirs import user_cache_dir

    return (Path(user_cache_dir("edgeopt")) / "mcu"
            / f"fit-{target}-{digest or sources_hash()}.json")


def load_table(target: str) -> dict[str, Any] | None:
    """This machine's fit for `target` and the current C sources, else the packaged table's
    entry for `target` (fitted on the sources named in it), else None."""
    try:
        return json.loads(cache_file(target).read_text())
    except (OSError, ValueError):
        pass
    try:
        return json.loads(DEFAULT_TABLE.read_text()).get(target)
    except (OSError, ValueError):
        return None


def predict(table: dict[str, Any], layers: list[Layer]) -> float:
    """Instructions of one inference: the layers' rows, plus the call's fixed cost. A variant the
    table lacks borrows its kind's 8-bit row (e.g. a compressed form not in the fit)."""
    rows = table["coefficients"]
    total = float(table.get("call", 0.0))
    for layer in layers:
        kind = _BORROW.get(layer.variant, layer.variant.split("/")[0])
        row = rows.get(layer.variant) or rows.get(f"{kind}/int8") or rows.get(kind)
        total += float(np.dot(row or [0.0] * len(FEATURES), layer.features()))
    return total


_BORROW = {"avg_pool2d": "max_pool2d"}  # the same loop (edgeopt_kernels.c pool())


class McuLatency:
    """(pruned model, policy) -> predicted milliseconds on `target` (FormulaCost's latency)."""

    def __init__(self, target: Any, example: torch.Tensor, table: dict[str, Any]) -> None:
        self.target, self.example, self.table = target, example, table

    def instructions(self, model: nn.Module, policy: Policy, traced: Any = None) -> float:
        """`traced`: the model's cost.shaped_trace, when the caller has it."""
        return predict(self.table, torch_layers(model, self.example, policy.bits, traced))

    def __call__(self, model: nn.Module, policy: Policy, traced: Any = None) -> float | None:
        if policy.clusters:  # decoded weights: no fitted row (a search offers no clustering
            return None      # under a latency budget)
        return self.target.latency_ms(self.instructions(model, policy, traced))


def latency_model(target: Any, example: torch.Tensor) -> McuLatency | None:
    """The predictor for MCU target `target` (a deploy.targets.Target), None without a table."""
    table = load_table(target.name)
    return None if table is None else McuLatency(target, example, table)
