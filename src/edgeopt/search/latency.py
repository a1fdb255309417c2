"""Latency on x86-ort, predicted kernel by kernel over the graph ONNX Runtime really runs.

A candidate is quantized as its policy's stage would quantize it and exported (as the search's
final measurement does); ONNX Runtime optimizes the export (QLinearConv, QLinearAdd, QGemm,
layout Transposes, DQ -> float op -> Q islands where no int8 kernel exists such as ReduceMean,
NCHWc float convolutions where activations stay float ...) and the optimized graph is run once
to learn every value's shape and dtype. Each node is then keyed by its domain, op type,
attributes and its inputs' and outputs' dtypes and shapes; a key not yet in the lookup table is
timed once as a one-node graph (the node's own constant inputs, its real input values fed and
its inputs and outputs bound once, no further optimization) and cached in the user cache
folder, scaled by a reference kernel's time when the table began over its time now
(`KernelTable.slowdown`). So every operator the runtime runs is covered (Adds, pools, Q / DQ,
reshapes, layout transposes) and a new architecture needs no refit: nothing is fitted.
The prediction is

    call + sum over nodes of (one-node time - node) + (nodes - 1) * per_node

where `call` is one session run of a one-node graph as a search runs a model (numpy in and
out), `node` the same graph's bound run (what every one-node time includes besides its kernel)
and `per_node` the executor's cost of one more node (a chain of Identity nodes), each timed
once. Timings are the median CPU time of the calling thread over runs on one ORT thread: other
jobs on a shared machine count less.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from edgeopt.search.space import Policy, quant_layers

_CHAIN = 33  # Identity nodes in the graph that times the per-node cost


def cache_tag() -> str:
    """Timings hold for one ORT version on one CPU model (its name and int8-relevant flags: a
    shared home folder may serve several machine kinds) with one core count."""
    import hashlib

    import onnxruntime

    from edgeopt.runtime.inspect import cpu_info

    cpu = hashlib.sha256(repr(cpu_info()).encode()).hexdigest()[:8]
    return f"{onnxruntime.__version__}-{platform.machine()}-{cpu}-{os.cpu_count()}"


def _cache_file() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgeopt")) / "latency" / f"kernels-cpu-v3-{cache_tag()}.json"


def _session(model: onnx.ModelProto, optimization: str = "disable",
             optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    from edgeopt.runtime.inspect import session_options

    options = session_options(1, optimization)
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph ORT runs for `model` on this machine (ORT_ENABLE_ALL, one thread)."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-latency-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        _session(model, "all", path)
        return onnx.load(path)


def node_values(optimized: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of the optimized graph on `feed`: its nodes' inputs, as ORT computes them."""
    probe = onnx.ModelProto()
    probe.CopyFrom(optimized)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        # an output without a type: ORT takes it from the node that makes it
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in node.output
                                  if n and n not in known)
    session = _session(probe)
    names = [o.name for o in session.get_outputs()]
    return {**feed, **dict(zip(names, session.run(names, feed)))}


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, onnx.TensorProto):
        return [value.data_type, list(value.dims)]
    if isinstance(value, list):
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
    return value if isinstance(value, int | float | str) else str(value)


def _describe(array: np.ndarray) -> list[Any]:
    return [str(array.dtype), list(array.shape)]


def kernel_key(node: onnx.NodeProto, values: dict[str, np.ndarray], constants: set[str]) -> str:
    """What decides a node's time: domain, op, attributes, inputs' and outputs' dtype / shape
    (constant inputs marked: ORT pre-packs constant weights)."""
    inputs = [[*_describe(values[n]), n in constants] if n else None for n in node.input]
    outputs = [_describe(values[n]) if n else None for n in node.output]
    attrs = sorted((a.name, _attribute(a)) for a in node.attribute)
    return json.dumps([node.domain, node.op_type, attrs, inputs, outputs], default=str)


def _one_node(node: onnx.NodeProto, values: dict[str, np.ndarray], constants: set[str],
              opsets: list[Any]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A graph of `node` alone: its constant inputs as initializers, the others fed."""
    fed = [n for n in dict.fromkeys(node.input) if n and n not in constants]
    graph = helper.make_graph(
        [node], "kernel",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype),
                                       values[n].shape) for n in fed],
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype),
                                       values[n].shape) for n in node.output if n],
        [numpy_helper.from_array(values[n], n) for n in dict.fromkeys(node.input)
         if n in constants])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = onnx.IR_VERSION
    return model, {n: values[n] for n in fed}


def time_session(session: Any, feed: dict[str, Any], runs: int = 40, warmup: int = 5) -> float:
    """Median ms of the calling thread's CPU time per run."""
    return _median_ms(lambda: session.run(None, feed), runs, warmup)


def time_bound(session: Any, feed: dict[str, np.ndarray], runs: int = 40,
               warmup: int = 5) -> float:
    """`time_session` with inputs and outputs bound once to ORT values: a one-node graph's
    time without the numpy conversions and output allocations a model pays only once."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    names = [o.name for o in session.get_outputs()]
    for name in names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)  # allocates the outputs once; they are reused below
    for name, value in zip(names, binding.get_outputs()):
        binding.bind_ortvalue_output(name, value)
    return _median_ms(lambda: session.run_with_iobinding(binding), runs, warmup)


def _median_ms(run: Any, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.thread_time_ns()
        run()
        times.append(time.thread_time_ns() - start)
    return float(np.median(times)) / 1e6


def _identity_chain(length: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    names = ["x", *[f"v{i}" for i in range(length)]]
    nodes = [helper.make_node("Identity", [a], [b]) for a, b in zip(names, names[1:])]
    info = [helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, [1, 16])
            for n in (names[0], names[-1])]
    model = helper.make_model(helper.make_graph(nodes, "chain", info[:1], info[1:]),
                              opset_imports=[helper.make_opsetid("", 18)])
    return model, {"x": np.zeros((1, 16), np.uint8)}


def _reference_kernel() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A QLinearConv (16 -> 32 channels, 3x3, 16x16 uint8 input): the kind of kernel that
    dominates the models searched here."""
    rng = np.random.default_rng(0)
    consts = {"xs": np.float32(0.02), "xz": np.uint8(128), "w": rng.integers(
        -127, 127, (32, 16, 3, 3)).astype(np.int8), "ws": np.float32(0.01), "wz": np.int8(0),
        "ys": np.float32(0.05), "yz": np.uint8(128)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "reference", [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8,
                                                            [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [1, 32, 16, 16])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, {"x": rng.integers(0, 255, (1, 16, 16, 16)).astype(np.uint8)}


class KernelTable:
    """kernel key -> ms of a one-node graph, measured on first use and kept in a JSON file that
    later searches share; "call", "node" and the Identity chain give the fixed costs (module
    docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _cache_file()
        try:
            self.table: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}
        self._reference: tuple[Any, dict[str, np.ndarray]] | None = None

    def ms(self, key: str, build: Any) -> float:
        """The time of `key`; `build()` gives (one-node model, feed) when it must be measured."""
        if key not in self.table:
            model, feed = build()
            self.table[key] = time_bound(_session(model), feed) * self.slowdown()
            self._save()
        return self.table[key]

    def slowdown(self) -> float:
        """The reference kernel's time when the table began over its time now: on a shared
        machine the same kernel's CPU time moves up to 2x with the neighbours' load, and keys
        timed in different minutes must add up as if timed in one."""
        if self._reference is None:
            model, feed = _reference_kernel()
            self._reference = (_session(model), feed)
        now = time_bound(*self._reference, runs=60)
        self.table.setdefault("reference", now)
        return self.table["reference"] / now

    def overheads(self) -> tuple[float, float, float]:
        """(call, node, per_node) in ms: a model run as a search calls it (numpy in and out),
        the bound one-node graph every kernel's time is less, and one more node."""
        if "call" not in self.table:
            model, feed = _identity_chain(1)
            self.table["call"] = time_session(_session(model), feed) * self.slowdown()
            self._save()
        node = self.ms("node", lambda: _identity_chain(1))
        chain = self.ms(f"chain{_CHAIN}", lambda: _identity_chain(_CHAIN))
        return self.table["call"], node, max(0.0, chain - node) / (_CHAIN - 1)

    def _save(self) -> None:
        from edgeopt.atomic import write_text

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self.table, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs re-measuring


def predict_onnx(model: onnx.ModelProto, feed: dict[str, np.ndarray],
                 table: KernelTable) -> float:
    """Predicted ms of one ORT run of `model` on `feed` (one thread, ORT_ENABLE_ALL)."""
    optimized = optimized_graph(model)
    values = node_values(optimized, feed)
    constants = {t.name for t in optimized.graph.initializer}
    values.update((t.name, numpy_helper.to_array(t)) for t in optimized.graph.initializer)
    opsets = list(optimized.opset_import)
    call, bound, per_node = table.overheads()
    total = call + (len(optimized.graph.node) - 1) * per_node
    for node in optimized.graph.node:
        key = kernel_key(node, values, constants)
        total += max(0.0, table.ms(key, lambda n=node: _one_node(n, values, constants, opsets))
                     - bound)
    return total


def quantized(pruned: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
    """`pruned` quantized as the policy's stage would (PTQ on random inputs: timing only)."""
    import edgeopt as eo
    from edgeopt.progress import quiet

    # token ids stay token ids: random floats would not even run an embedding
    inputs = (torch.randn(4, *example.shape[1:]) if example.is_floating_point()
              else example[:1].repeat(4, *[1] * (example.dim() - 1)))
    config = eo.QuantConfig.from_dict({**quant_layers(policy), "calibration_samples": 4})
    with quiet():  # no calibration bar
        return eo.apply(pruned, config, data=[(inputs, None)])


def exported(pruned: nn.Module, policy: Policy, example: torch.Tensor) -> onnx.ModelProto:
    """The candidate as the search's final measurement exports it (QDQ ONNX)."""
    from edgeopt.export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgeopt-latency-") as tmp:
        # timing only: random weights may round a value differently in ORT, which is no error
        path = export_onnx(quantized(pruned, policy, example), Path(tmp) / "m.onnx", example,
                           check=False)
        return onnx.load(str(path))


def latency_model(example: torch.Tensor, table: KernelTable | None = None) -> Any:
    """(pruned model, policy) -> predicted ms on x86-ort, remembered per structure and bits."""
    table = table or KernelTable()
    memo: dict[tuple[Any, ...], float] = {}

    def predict(model: nn.Module, policy: Policy, traced: Any = None) -> float:
        # `traced` (FormulaCost's shaped_trace) is not needed: ORT's own graph is costed
        key = (repr(model), tuple(example.shape), tuple(sorted(policy.bits.items())))
        if key not in memo:
            onnx_model = exported(model, policy, example)
            feed = {onnx_model.graph.input[0].name: example[:1].numpy()}
            memo[key] = predict_onnx(onnx_model, feed, table)
        return memo[key]

    return predict
