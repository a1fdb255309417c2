"""Latency on x86-ort from a per-layer lookup table of ONNX Runtime timings.

Each Conv / Linear layer is keyed by its shapes and number format; a key not yet in the table
is measured once (a one-operator ONNX graph: Conv or QLinearConv, Gemm or QLinearMatMul,
median CPU time of runs on one thread) and cached in the user cache folder. The table's timings
(less one session call, timed on an Identity graph) are one feature of the whole-model
predictor in edgeopt.search.ortfit, which adds the per-operator and Q/DQ costs they miss.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.search.space import FLOAT, Policy


def cache_tag() -> str:
    """Timings hold for one ORT version on one kind of machine."""
    import onnxruntime

    return f"{onnxruntime.__version__}-{platform.machine()}-{os.cpu_count()}"


def _cache_file() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgeopt")) / "latency" / f"lut-cpu-{cache_tag()}.json"


def layer_keys(model: nn.Module, example: torch.Tensor, bits: dict[str, int]) -> list[str]:
    """One key per Conv / Linear layer: kind, input shape, weight shape, stride/pad/groups, format."""
    keys: list[str] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, _: Any) -> None:
            fmt = "f32" if bits.get(name, 8) == FLOAT else "i8"
            shape = tuple(inputs[0].shape[1:])
            if isinstance(module, nn.Linear):
                entry: list[Any] = ["gemm", module.in_features, module.out_features, fmt]
            else:
                entry = ["conv", list(shape), list(module.weight.shape), list(module.stride),
                         list(module.padding), module.groups, list(module.dilation), fmt]
            keys.append(json.dumps(entry))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return keys


_CALL = json.dumps(["call"])  # a session call that only copies its input: the fixed cost


def _graph(key: str) -> tuple[Any, dict[str, np.ndarray]]:
    """A one-operator ONNX model for `key` and its input feed."""
    from onnx import TensorProto, helper, numpy_helper

    parts = json.loads(key)
    rng = np.random.default_rng(0)
    if parts[0] == "call":
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "call",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 16])],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 16])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        return model, {"x": np.zeros((1, 16), np.uint8)}
    fmt = parts[-1]
    if parts[0] == "gemm":
        cin, cout = parts[1], parts[2]
        x_shape, w = [1, cin], rng.standard_normal((cin, cout)).astype(np.float32)
        attrs: dict[str, Any] = {}
        op = "MatMul"
    else:
        _, shape, weight_shape, stride, pad, groups, dil, _ = parts
        x_shape = [1, *shape]
        w = rng.standard_normal(weight_shape).astype(np.float32)
        attrs = {"strides": stride, "pads": pad * 2, "group": groups, "dilations": dil}
        op = "Conv"
    if fmt == "f32":
        inits = [numpy_helper.from_array(w, "w")]
        node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
        x_type, x = TensorProto.FLOAT, rng.standard_normal(x_shape).astype(np.float32)
    else:
        q = {"xs": np.float32(0.02), "xz": np.uint8(128), "ws": np.float32(0.01),
             "wz": np.int8(0), "ys": np.float32(0.05), "yz": np.uint8(128)}
        inits = [numpy_helper.from_array(np.array(v), k) for k, v in q.items()]
        inits.append(numpy_helper.from_array(rng.integers(-127, 127, w.shape).astype(np.int8), "w"))
        qop = "QLinearMatMul" if op == "MatMul" else "QLinearConv"
        node = helper.make_node(qop, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], **attrs)
        x_type, x = TensorProto.UINT8, rng.integers(0, 255, x_shape).astype(np.uint8)
    y_type = TensorProto.FLOAT if fmt == "f32" else TensorProto.UINT8
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", x_type, x_shape)],
                              [helper.make_tensor_value_info("y", y_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, {"x": x}


def measure_key(key: str, runs: int = 60) -> float:
    """Median milliseconds of one layer in ONNX Runtime (1 thread)."""
    import onnxruntime as ort

    model, feed = _graph(key)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):  # this thread's CPU time: other jobs on a shared machine do not count
        start = time.thread_time_ns()
        session.run(None, feed)
        times.append(time.thread_time_ns() - start)
    return float(np.median(times)) / 1e6


class LatencyTable:
    """key -> ms, measured on first use and kept in a JSON file shared by later searches."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _cache_file()
        try:
            self.table: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}

    def ms(self, key: str) -> float:
        """The timing of `key`, measured (and saved) on first use."""
        if key not in self.table:
            self.table[key] = measure_key(key)
            self._save()
        return self.table[key]

    def call_ms(self) -> float:
        return self.ms(_CALL)

    def __call__(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> float:
        keys = layer_keys(model, example, policy.bits)
        # every one-layer timing includes one session call; the model pays it once
        call = self.call_ms()
        return call + float(sum(max(0.0, self.ms(k) - call) for k in keys))

    def _save(self) -> None:
        from edgeopt.atomic import write_text

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self.table, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs re-measuring


def latency_model(example: torch.Tensor, coefficients: dict[str, float] | None = None) -> Any:
    """Predicted ms of a pruned model under a policy: the fitted whole-model model
    (edgeopt.search.ortfit) with `coefficients`, or with this machine's fit when one is cached
    (bench/bench_search.py latency); otherwise the sum of the layer table's timings, which
    ranked held-out architectures at least as well on a loaded machine (README)."""
    from edgeopt.search import ortfit

    fitted = coefficients or ortfit.cached_fit()
    if fitted is None:
        return layer_sum_model(example)
    table = LatencyTable()
    return lambda model, policy: ortfit.predict(fitted, ortfit.features(model, policy, example,
                                                                        table))


def layer_sum_model(example: torch.Tensor) -> Any:
    """One session call plus each layer's one-operator timing less that call."""
    table = LatencyTable()
    return lambda model, policy: table(model, policy, example)
