"""Int8 TFLite export: the flatbuffer runs in LiteRT and TFLite Micro and computes edgeopt's integer
reference bit for bit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgeopt.deploy.ir import Graph, Op, QParams, Tensor
from edgeopt.errors import ExportError
from edgeopt.export import tflite

needs_litert = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason="ai-edge-litert is not installed (pip install -e '.[dev]')",
)
needs_tflm = pytest.mark.skipif(
    importlib.util.find_spec("tflite_micro") is None,
    reason="tflite-micro is not installed (pip install -e '.[dev]')",
)


def _act(name: str, shape: tuple[int, ...], scale: float, zero_point: int) -> Tensor:
    return Tensor(name, shape, "int8", QParams.of(scale, zero_point))


def _const(name: str, data: np.ndarray, scale: np.ndarray, axis: int) -> Tensor:
    dtype = "int32" if data.dtype == np.int32 else "int8"
    qparams = QParams.of(scale, np.zeros(scale.shape, np.int32), axis)
    return Tensor(name, data.shape, dtype, qparams, data)


def _conv_params(t: dict, rng: np.random.Generator, name: str, shape: tuple, axis: int, in_scale: float) -> None:
    scale = rng.uniform(0.005, 0.02, shape[axis]).astype(np.float32)
    t[f"w{name}"] = _const(f"w{name}", rng.integers(-127, 128, shape).astype(np.int8), scale, axis)
    bias = rng.integers(-500, 500, shape[axis]).astype(np.int32)
    t[f"b{name}"] = _const(f"b{name}", bias, (in_scale * scale).astype(np.float32), 0)


def hand_graph(seed: int = 0) -> Graph:
    """Every IR op kind once: conv (SAME), depthwise stride 2 (explicit PAD), max pool, add, mean,
    reshape, fully connected, concat, pad, average pool; fused ReLU / ReLU6."""
    rng = np.random.default_rng(seed)
    t = {
        "x": _act("x", (1, 8, 8, 3), 0.05, -3),
        "c1": _act("c1", (1, 8, 8, 4), 0.1, -128),
        "c2": _act("c2", (1, 4, 4, 4), 0.08, 5),
        "p": _act("p", (1, 4, 4, 4), 0.1, -128),
        "a": _act("a", (1, 4, 4, 4), 0.12, -20),
        "q": _act("q", (1, 6, 6, 4), 0.12, -20),
        "v": _act("v", (1, 3, 3, 4), 0.12, -20),
        "k": _act("k", (1, 3, 3, 8), 0.12, -20),
        "m": _act("m", (1, 1, 1, 8), 0.07, -10),
        "r": _act("r", (1, 8), 0.07, -10),
        "y": _act("y", (1, 5), 0.2, 3),
    }
    _conv_params(t, rng, "1", (4, 3, 3, 3), 0, 0.05)
    _conv_params(t, rng, "2", (1, 3, 3, 4), 3, 0.1)
    _conv_params(t, rng, "3", (5, 8), 0, 0.07)
    spatial = {"stride": (1, 1), "dilation": (1, 1)}
    ops = [
        Op("conv2d", ["x", "w1", "b1"], ["c1"], {**spatial, "padding": (1, 1, 1, 1), "activation": "relu"}),
        Op("depthwise_conv2d", ["c1", "w2", "b2"], ["c2"], {**spatial, "stride": (2, 2), "depth_multiplier": 1,
                                                            "padding": (1, 1, 1, 1), "activation": "relu6"}),
        Op("max_pool2d", ["c1"], ["p"], {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0, 0, 0),
                                         "activation": "none"}),
        Op("add", ["c2", "p"], ["a"], {"activation": "relu"}),
        Op("pad", ["a"], ["q"], {"padding": (1, 1, 1, 1)}),
        Op("avg_pool2d", ["q"], ["v"], {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0, 0, 0),
                                        "activation": "none"}),
        Op("concat", ["v", "v"], ["k"], {"axis": 3}),
        Op("mean", ["k"], ["m"], {}),
        Op("reshape", ["m"], ["r"], {}),
        Op("fully_connected", ["r", "w3", "b3"], ["y"], {"activation": "none"}),
    ]
    return Graph(t, ops, ["x"], ["y"])


def _inputs(n: int, shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape)).astype(np.int8)


def test_flatbuffer_follows_the_int8_spec():
    from tflite.Model import Model

    data = tflite.graph_to_tflite(hand_graph())
    assert data[4:8] == b"TFL3"
    model = Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    tensors = {graph.Tensors(i).Name().decode(): graph.Tensors(i) for i in range(graph.TensorsLength())}
    assert tensors["x"].Type() == 9 and tensors["y"].Type() == 9  # int8 in and out
    w1, w2, b1 = tensors["w1"].Quantization(), tensors["w2"].Quantization(), tensors["b1"].Quantization()
    assert w1.ScaleLength() == 4 and w1.QuantizedDimension() == 0 and not w1.ZeroPointAsNumpy().any()
    assert w2.QuantizedDimension() == 3  # depthwise weights 1HWC: per output channel on the last axis
    assert tensors["b1"].Type() == 2 and b1.ScaleLength() == 4
    codes = sorted(model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength()))
    # ADD, AVERAGE_POOL_2D, CONCATENATION, CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, MAX_POOL_2D,
    # RESHAPE, PAD, MEAN
    assert codes == [0, 1, 2, 3, 4, 9, 17, 22, 34, 40]
    for i in range(model.BuffersLength()):  # weights readable in place on a 32-bit MCU
        tab = model.Buffers(i)._tab
        if model.Buffers(i).DataLength():
            assert tab.Vector(tab.Offset(4)) % 16 == 0


@needs_litert
@needs_tflm
def test_litert_reference_kernels_and_tflm_agree_bit_for_bit():
    data = tflite.graph_to_tflite(hand_graph())
    x = _inputs(40, (1, 8, 8, 3))
    micro = tflite.run_tflm(data, x)
    assert micro.dtype == np.int8 and micro.shape == (40, 5)
    np.testing.assert_array_equal(tflite.run_litert(data, x, reference_kernels=True), micro)
    assert len(np.unique(micro, axis=0)) > 30  # the outputs depend on the input


def conv_graph(size: int) -> Graph:
    rng = np.random.default_rng(0)
    t = {"x": _act("x", (1, size, size, 3), 0.05, -3), "y": _act("y", (1, size, size, 4), 0.1, -128)}
    _conv_params(t, rng, "1", (4, 3, 3, 3), 0, 0.05)
    attrs = {"stride": (1, 1), "dilation": (1, 1), "padding": (1, 1, 1, 1), "activation": "relu"}
    return Graph(t, [Op("conv2d", ["x", "w1", "b1"], ["y"], attrs)], ["x"], ["y"])


@needs_tflm
def test_tflm_arena_bytes_counts_the_activations():
    small, large = (tflite.tflm_arena_bytes(tflite.graph_to_tflite(conv_graph(n))) for n in (8, 32))
    assert 0 < small < 10_000
    # Input and output live together: (32² - 8²) pixels x (3 + 4) channels more, give or take alignment.
    assert abs((large - small) - (32 * 32 - 8 * 8) * 7) < 64


def test_unsupported_op_is_named():
    graph = hand_graph()
    graph.ops[0] = Op("softmax", ["x"], ["c1"], {}, name="/head/Softmax")
    with pytest.raises(ExportError, match=r"/head/Softmax.*'softmax'.*supported: add, avg_pool2d"):
        tflite.graph_to_tflite(graph)


def test_max_pool_padding_tflite_cannot_express_is_refused():
    graph = hand_graph()
    graph.ops[2].attrs["padding"] = (1, 1, 0, 0)
    with pytest.raises(ExportError, match="MAX_POOL_2D"):
        tflite.graph_to_tflite(graph)
