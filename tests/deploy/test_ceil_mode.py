"""Max pooling with ceil_mode (mini-Xception's TF 'SAME' pools): lowered as floor mode with padding at
the bottom / right, bit-exact in the reference, the C kernels and TFLite Micro, and ONNX Runtime's."""

import importlib.util
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.c import build_c, run_host
from edgeopt.deploy.lower import lower_onnx
from edgeopt.export import tflite

SHAPE = (3, 12, 12)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(  # 12x12 -> 6x6 (ceil: SAME-like), 6x6 -> 4x4 (ceil with padding 1: not SAME)
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    calib, test = torch.randn(32, *SHAPE, generator=g), torch.randn(24, *SHAPE, generator=g)
    q = eo.apply(_model(), eo.QuantConfig(), data=[calib])
    path = eo.export_onnx(q, tmp_path_factory.mktemp("ceil") / "int8.onnx", test[:1])
    graph = lower_onnx(path, calibration=calib)
    x = reference.quantize_input(graph, test.numpy())
    expected = np.stack([reference.run(graph, row)[0].reshape(-1) for row in x])
    return path, graph, test, x, expected


def test_ceil_mode_pools_lower_with_end_padding(lowered):
    _, graph, _, _, _ = lowered
    pools = [op for op in graph.ops if op.kind == "max_pool2d"]
    assert [op.attrs["padding"] for op in pools] == [(0, 0, 1, 1), (1, 1, 2, 2)]
    assert [graph.tensors[op.outputs[0]].shape[1:3] for op in pools] == [(6, 6), (4, 4)]


def test_reference_matches_onnx_runtime(lowered):
    import onnxruntime as ort

    path, graph, test, x, expected = lowered
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {session.get_inputs()[0].name: test.numpy()})[0]
    q = graph.tensors[graph.outputs[0]].qparams
    ours = (expected.astype(np.float32) - int(q.zero_point)) * float(q.scale)
    assert np.abs(ours - onnx).max() <= 2 * float(q.scale)  # a pool misplaced would be far off


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                    reason="the host self-test needs gcc and make (apt-get install gcc make)")
def test_c_kernels_are_bit_exact(lowered, tmp_path):
    _, graph, _, x, _ = lowered
    info = build_c(graph, tmp_path / "c", test_inputs=x[:6])
    assert run_host(info.out_dir).strip() == "edgeopt selftest: 6/6 bit-exact"


@pytest.mark.skipif(importlib.util.find_spec("tflite_micro") is None,
                    reason="tflite-micro is not installed (pip install -e '.[dev]')")
def test_tflite_micro_is_bit_exact(lowered):
    _, graph, _, x, expected = lowered
    model = tflite.graph_to_tflite(graph)
    np.testing.assert_array_equal(tflite.run_tflm(model, x), expected)
