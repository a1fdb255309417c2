"""The kernel-level x86-ort latency predictor on tiny graphs: every node of the graph ORT runs is
keyed and measured once, keys are cached on disk, Adds and pools are covered. No timing is
asserted beyond a 16x difference in work (bench/bench_search.py latency scores the predictor)."""

import json

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgeopt.search import latency
from edgeopt.search.space import FLOAT, Policy


def _float_graph(width: int, size: int = 8):
    """Conv -> Relu -> Add (a residual) -> GlobalAveragePool on a (1, width, size, size) input."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((width, width, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    shape = [1, width, size, size]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, {"x": rng.standard_normal(shape).astype(np.float32)}


def _counting(monkeypatch):
    calls = []

    def fake(session, feed, runs=40, warmup=5):
        calls.append(session)
        return 0.01 * len(calls)

    monkeypatch.setattr(latency, "time_session", fake)
    monkeypatch.setattr(latency, "time_bound", fake)
    monkeypatch.setattr(latency.KernelTable, "slowdown", lambda self: 1.0)
    return calls


def test_each_kernel_key_is_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    model, feed = _float_graph(4)
    table = latency.KernelTable(tmp_path / "lut.json")
    first = latency.predict_onnx(model, feed, table)
    measured = len(calls)
    # every node ORT runs after optimization (Conv+Relu fused), plus the three fixed costs
    nodes = latency.optimized_graph(model).graph.node
    assert measured == len(nodes) + 3 and first > 0
    assert latency.predict_onnx(model, feed, table) == first and len(calls) == measured
    reloaded = latency.KernelTable(tmp_path / "lut.json")
    assert latency.predict_onnx(model, feed, reloaded) == first and len(calls) == measured
    ops = {json.loads(k)[1] for k in reloaded.table if k.startswith("[")}
    assert {"Add", "GlobalAveragePool"} <= ops


def test_keys_timed_while_the_machine_runs_slower_are_scaled_back(tmp_path, monkeypatch):
    speed = {"slower": 1.0}  # every kernel, the reference included, takes this factor longer
    monkeypatch.setattr(latency, "time_bound",
                        lambda session, feed, runs=40, warmup=5: 0.01 * speed["slower"])
    table = latency.KernelTable(tmp_path / "lut.json")
    assert table.ms("a", lambda: _float_graph(4)) == pytest.approx(0.01)
    speed["slower"] = 2.0
    assert table.ms("b", lambda: _float_graph(4)) == pytest.approx(0.01)


def test_keys_tell_shapes_and_constant_inputs_apart():
    model, feed = _float_graph(4)
    optimized = latency.optimized_graph(model)
    values = latency.node_values(optimized, feed)
    constants = {t.name for t in optimized.graph.initializer}
    values.update((t.name, numpy_helper.to_array(t)) for t in optimized.graph.initializer)
    keys = [json.loads(latency.kernel_key(n, values, constants)) for n in optimized.graph.node]
    conv = next(k for k in keys if "Conv" in k[1])
    assert conv[3][0] == ["float32", [1, 4, 8, 8], False]  # fed activation
    # the constant weight as ORT keeps it (NCHWc: output channels padded to a block)
    assert conv[3][1][0] == "float32" and conv[3][1][2] is True
    wider, wider_feed = _float_graph(8)
    opt8 = latency.optimized_graph(wider)
    values8 = latency.node_values(opt8, wider_feed)
    values8.update((t.name, numpy_helper.to_array(t)) for t in opt8.graph.initializer)
    keys8 = {latency.kernel_key(n, values8, constants) for n in opt8.graph.node}
    assert not keys8 & {json.dumps(k) for k in keys}


def test_a_wider_model_is_predicted_slower(tmp_path):
    table = latency.KernelTable(tmp_path / "lut.json")
    narrow = latency.predict_onnx(*_float_graph(8, 16), table)
    wide = latency.predict_onnx(*_float_graph(32, 16), table)  # 16x the convolution's work
    assert wide > narrow > 0


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = y + self.conv2(y)
        return self.fc(self.pool(y).flatten(1))


def test_a_quantized_candidate_is_costed_over_the_kernels_ort_runs(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    model, example = _Residual().eval(), torch.randn(1, 2, 8, 8)
    table = latency.KernelTable(tmp_path / "lut.json")
    policy = Policy(bits={"conv1": 8, "conv2": FLOAT, "fc": 4}, keep={})
    predict = latency.latency_model(example, table)
    assert predict(model, policy) > 0
    ops = {json.loads(k)[1] for k in table.table if k.startswith("[")}
    assert "QLinearConv" in ops and "QLinearAdd" in ops  # int8 convs and the residual Add
    # the mean has no int8 kernel: it runs in float between DequantizeLinear and QuantizeLinear
    assert {"DequantizeLinear", "QuantizeLinear", "ReduceMean"} <= ops
    measured = len(calls)
    assert predict(model, policy) > 0 and len(calls) == measured  # remembered, not re-exported


def test_the_kernel_cache_is_per_cpu_model(monkeypatch):
    from edgeopt.runtime import inspect
    from edgeopt.search.latency import cache_tag

    here = cache_tag()
    monkeypatch.setattr(inspect, "cpu_info", lambda: ("Another CPU", ("avx2",)))
    assert cache_tag() != here


class _TokenClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.embed(ids).mean(1))


def test_a_model_of_token_ids_is_calibrated_and_fed_token_ids(tmp_path, monkeypatch):
    # random float calibration inputs would not even run the embedding
    _counting(monkeypatch)
    torch.manual_seed(0)
    example = torch.randint(0, 50, (1, 6))
    predict = latency.latency_model(example, latency.KernelTable(tmp_path / "lut.json"))
    assert predict(_TokenClassifier().eval(), Policy(bits={"fc": 8}, keep={})) > 0
