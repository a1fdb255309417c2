"""Static memory plan over tensor lifetimes: one arena, greedy by size, in place where it is safe.

The graph input is an arena buffer (live from the first op until its last reader, like TFLite Micro's input
tensor; the application writes it through edgeopt_model_input()), the graph output the caller's buffer.
A reshape shares its input's storage; an add writes over an input that dies at that add
(elementwise: each value is read before it is written); a stride-1 depthwise convolution with 8-bit
weights writes over its dying input row by row, keeping the rows above that later outputs read in scratch
(in-place depthwise as in TinyEngine); so does a stride-1 convolution with no more output than input
channels (a pointwise one pixel by pixel, a k x k one row by row with a ring of pad_t input rows). Kernels that
unpack 4-bit or compressed weights (compress.py) get a scratch buffer that lives for that op only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeopt.deploy.c.compress import Encoded
from edgeopt.deploy.ir import Graph, Op

ALIGN = 4
OUTPUT = "output"  # the caller's output buffer, outside the arena


@dataclass
class Plan:
    storage: dict[str, str]  # tensor -> storage name (a buffer or OUTPUT)
    offsets: dict[str, int]  # buffer -> arena offset
    sizes: dict[str, int]  # buffer -> bytes
    lifetimes: dict[str, tuple[int, int]]  # buffer -> (first op, last op)
    scratch: dict[int, str] = field(default_factory=dict)  # op index -> scratch buffer
    arena_bytes: int = 0
    weight_forms: dict[str, Encoded] = field(default_factory=dict)  # compressed weights (compress.choose)

    def peak_live_bytes(self) -> int:
        """The most bytes alive at once: the lower bound any planner could reach."""
        steps = {t for span in self.lifetimes.values() for t in span}
        return max((sum(self.sizes[b] for b, (lo, hi) in self.lifetimes.items() if lo <= t <= hi)
                    for t in steps), default=0)


def in_place_ok(graph: Graph, op: Op, forms: dict[str, Encoded] | None = None) -> bool:
    """A conv that may write over its input: a depthwise conv keeping the shape (one channel per channel),
    or a pointwise conv at stride 1 with out_c <= in_c; 8-bit weights, not compressed (`forms`)."""
    if op.kind not in ("depthwise_conv2d", "conv2d") or op.attrs.get("depth_multiplier", 1) != 1:
        return False
    if op.inputs[1] in (forms or {}):  # compressed rows are decoded one output channel at a time
        return False
    x, w, out = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]], graph.tensors[op.outputs[0]]
    same_grid = x.shape[:3] == out.shape[:3] and tuple(op.attrs["stride"]) == (1, 1) and w.dtype == "int8"
    if op.kind == "conv2d":
        fits = same_grid and out.shape[3] <= x.shape[3]
    else:
        fits = same_grid and x.shape == out.shape
    return fits and scratch_bytes(graph, op, True) < out.size  # worth it: a height-1 row is the whole tensor


def scratch_bytes(graph: Graph, op: Op, in_place: bool = False, form: Encoded | None = None) -> int:
    """Scratch a kernel needs: a conv's input window (or its unpacked 4-bit or compressed weight row), a
    depthwise conv's int32 accumulators (and unpacked 4-bit weights), a fully connected layer's 4-bit or
    compressed row (none when sparse: it walks the bitmap)."""
    if op.kind not in ("conv2d", "depthwise_conv2d", "fully_connected"):
        return 0
    w = graph.tensors[op.inputs[1]]
    if form is not None:  # the decoded row; a sparse conv also lists its nonzeros (16-bit offset + value)
        row = w.size // w.shape[0]
        if form.bitmap is None:
            return row
        return 0 if op.kind == "fully_connected" else 4 * row + 2
    packed = w.dtype == "int4"
    pointwise = op.kind == "conv2d" and op.attrs["kernel"] == (1, 1) and not any(op.attrs["padding"])
    if op.kind == "conv2d" and in_place and pointwise:
        return graph.tensors[op.outputs[0]].shape[3]
    if op.kind == "conv2d" and in_place:  # input window, one output row, a ring of pad_t input rows
        _, _, width, channels = graph.tensors[op.inputs[0]].shape
        return w.size // w.shape[0] + width * w.shape[0] + op.attrs["padding"][0] * width * channels
    if op.kind == "depthwise_conv2d" and in_place:  # accumulators, one output row, a ring of pad_t input rows
        _, _, width, channels = graph.tensors[op.inputs[0]].shape
        return 4 * channels + (1 + op.attrs["padding"][0]) * width * channels
    if op.kind == "depthwise_conv2d":
        return 4 * w.shape[-1] + (w.size if packed else 0)
    if op.kind == "fully_connected":
        return w.size // w.shape[0] if packed else 0
    return 0 if pointwise and not packed else w.size // w.shape[0]


def plan_memory(graph: Graph, forms: dict[str, Encoded] | None = None) -> Plan:
    """forms: weight tensor -> compressed form, for the layers whose weights are stored compressed."""
    forms = forms or {}
    storage = _storages(graph, forms)
    sizes: dict[str, int] = {}
    lifetimes: dict[str, tuple[int, int]] = {}
    for index, op in enumerate(graph.ops):
        for name in op.inputs + op.outputs:
            buf = storage.get(name)
            if buf is None or buf == OUTPUT:
                continue
            sizes[buf] = max(sizes.get(buf, 0), graph.tensors[name].size)
            # the input is written before the first op runs
            lo, hi = lifetimes.get(buf, (0 if buf == storage[graph.inputs[0]] else index, index))
            lifetimes[buf] = (min(lo, index), max(hi, index))
    plan = Plan(storage, {}, sizes, lifetimes, weight_forms=forms)
    for index, op in enumerate(graph.ops):
        form = forms.get(op.inputs[1]) if len(op.inputs) > 1 else None
        need = scratch_bytes(graph, op, storage[op.outputs[0]] == storage[op.inputs[0]], form)
        if need:
            name = f"scratch{index}"
            plan.scratch[index], sizes[name], lifetimes[name] = name, need, (index, index)
    plan.offsets, plan.arena_bytes = greedy_by_size(sizes, lifetimes)
    return plan


def _storages(graph: Graph, forms: dict[str, Encoded]) -> dict[str, str]:
    storage = {graph.inputs[0]: graph.inputs[0], graph.outputs[0]: OUTPUT}
    last_use = {name: i for i, op in enumerate(graph.ops) for name in op.inputs}
    for op in graph.ops:
        out = op.outputs[0]
        if out in storage:
            continue
        src = op.inputs[0] if op.kind == "reshape" else _dying_input(graph, op, storage, last_use, forms)
        storage[out] = storage[src] if src is not None and storage[src] != OUTPUT else out
    return storage


def _dying_input(graph: Graph, op: Op, storage: dict[str, str], last_use: dict[str, int],
                 forms: dict[str, Encoded]) -> str | None:
    """An input of an add (or in-place conv) whose storage is used for the last time here."""
    if op.kind != "add" and not in_place_ok(graph, op, forms):
        return None
    index = graph.ops.index(op)
    for name in op.inputs[:2 if op.kind == "add" else 1]:
        buf = storage[name]
        users = [n for n, s in storage.items() if s == buf]
        if all(last_use.get(n, -1) <= index for n in users):
            return name
    return None


def greedy_by_size(sizes: dict[str, int], lifetimes: dict[str, tuple[int, int]]) -> tuple[dict[str, int], int]:
    """Largest buffer first, each at the lowest aligned offset free of every buffer it lives beside."""
    placed: list[tuple[int, int, str]] = []  # (offset, end, name)
    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        lo, hi = lifetimes[name]
        clashes = sorted((o, e) for o, e, other in placed
                         if lifetimes[other][0] <= hi and lo <= lifetimes[other][1])
        offset = 0
        for start, end in clashes:
            if offset + sizes[name] <= start:
                break
            offset = max(offset, _align(end))
        offsets[name] = offset
        placed.append((offset, offset + sizes[name], name))
    return offsets, _align(max((e for _, e, _ in placed), default=0))


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
