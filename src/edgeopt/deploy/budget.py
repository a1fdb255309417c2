"""Does a stage fit a target? Flash and RAM estimated from the lowered integer graph, no build.

flash = the constant data the C kernels read (weights, packed two per byte where they fit 4 bits;
int32 biases; an int32 multiplier and shift per output channel); code is not included.
RAM = the generated C's static arena (edgeopt.deploy.c.plan: lifetimes, in-place ops; it holds the
input) plus the model's output buffer; `peak_activation_bytes` is the lower bound any planner meets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.deploy.ir import Graph
from edgeopt.deploy.targets import Target, fits
from edgeopt.errors import EdgeoptError

_REQUANTIZING = {"conv2d", "depthwise_conv2d", "fully_connected"}


def weight_bytes(graph: Graph) -> int:
    total = 0
    for tensor in graph.tensors.values():
        if tensor.is_constant:
            per = {"int4": 0.5, "int32": 4}.get(tensor.dtype, 1)
            total += int(-(-tensor.size * per // 1))
    for op in graph.ops:  # per-channel int32 multiplier + shift
        if op.kind in _REQUANTIZING:
            total += 8 * graph.tensors[op.outputs[0]].shape[-1]
    return total


def peak_activation_bytes(graph: Graph) -> int:
    """Largest sum of int8 activation tensors alive at one op (inputs and outputs of it included)."""
    alias = {op.outputs[0]: _root(graph, op.inputs[0]) for op in graph.ops if op.kind == "reshape"}
    root = {name: alias.get(name, name) for name in graph.tensors}
    first: dict[str, int] = {root[name]: 0 for name in graph.inputs}
    last: dict[str, int] = {}
    for index, op in enumerate(graph.ops):
        for name in op.outputs:
            first.setdefault(root[name], index)
        for name in op.inputs:
            if not graph.tensors[name].is_constant:
                last[root[name]] = index
    end = len(graph.ops)
    for name in graph.outputs:
        last[root[name]] = end
    peak = 0
    for index in range(end + 1):
        live = [name for name, start in first.items() if start <= index <= last.get(name, start)]
        peak = max(peak, sum(graph.tensors[name].size for name in live))
    return peak


def _root(graph: Graph, name: str) -> str:
    producer = graph.producer(name)
    while producer is not None and producer.kind == "reshape":
        name = producer.inputs[0]
        producer = graph.producer(name)
    return name


def stage_fit(onnx_path: Path, target: Target) -> dict[str, Any]:
    """The target's verdict on one stage's ONNX file (its budgets, the estimates, fits)."""
    budgets = {"target": target.name, "flash_budget_bytes": target.flash_bytes,
               "ram_budget_bytes": target.ram_bytes}
    if not target.is_mcu:
        from edgeopt.runtime.inspect import size_on_disk

        return {**budgets, "deployable": True, **fits(target, size_on_disk(onnx_path), None),
                "note": "runs the ONNX file as it is"}
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    if "QuantizeLinear" not in ops:
        return {**budgets, "deployable": False, "fits": False,
                "note": "float model: integer-only MCU code needs an int8 stage"}
    from edgeopt.deploy.lower import lower_onnx

    try:
        graph = lower_onnx(onnx_path)
    except EdgeoptError as exc:
        return {**budgets, "deployable": False, "fits": False, "note": str(exc)}
    from edgeopt.deploy.c.plan import plan_memory

    io = graph.tensors[graph.outputs[0]].size  # the arena holds the input
    verdict = fits(target, weight_bytes(graph), plan_memory(graph).arena_bytes + io)
    return {**budgets, "deployable": True, **verdict, **predicted_speed(graph, target),
            "note": "estimated: weights + per-channel requantization (no code); arena (with "
                    "the input) + output"}


def predicted_speed(graph: Graph, target: Target) -> dict[str, Any]:
    """Instructions per inference predicted per layer (edgeopt.search.mcu, the table a search
    uses) and the latency they take at the target's assumed clock; {} without a table."""
    from edgeopt.deploy.c.compress import choose
    from edgeopt.search import mcu

    table = mcu.load_table(target.name)
    if table is None:
        return {}
    instructions = mcu.predict(table, mcu.ir_layers(graph, choose(graph)))
    return {"instructions_predicted": round(instructions),
            "latency_ms_predicted": target.latency_ms(instructions)}
