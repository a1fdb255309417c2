"""Simulated == deployed: the quantized PyTorch module computes what ONNX Runtime's int8 kernels
compute, on a MobileNetV2-like network (ReLU6, depthwise, inverted residual adds, a dead channel)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from qhelpers import settle_batch_norm

import edgeopt as eo
from edgeopt.quantization.modules import ActQuant, QuantizedAdd, QuantizedWeightLayer
from edgeopt.quantization.primitives import (
    bias_safe_weight_scale,
    int32_bias_bound,
    qlinear_add,
)
from edgeopt.runtime.inspect import census


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = _conv_bn(channels, hidden)
        self.depthwise = _conv_bn(hidden, hidden, 3, groups=hidden)
        self.project = _conv_bn(hidden, channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class TinyMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, stride=2)
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = _conv_bn(8, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = nn.functional.avg_pool2d(torch.randn(n, 3, 32, 32, generator=g), 5, 1, 2)
    return 3.0 * smooth + 0.2 * torch.randn(n, 3, 1, 1, generator=g)


def tiny_mobilenet_v2() -> nn.Module:
    """Batch norm settled on data; one depthwise channel is dead (gamma ~ 0, its output is its
    bias), as trained networks have: its bias does not fit int32 at the weights' own scale."""
    torch.manual_seed(0)
    model = TinyMobileNetV2()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 1.0)
    model = settle_batch_norm(model, _images(256, seed=1))
    with torch.no_grad():
        dead = model.blocks[0].depthwise[1]
        dead.weight[3], dead.bias[3] = 1e-9, 3.0
    return model


@pytest.fixture(scope="module")
def quantized_tiny():
    model = tiny_mobilenet_v2()
    return model, eo.apply(model, eo.QuantConfig(), data=[_images(128, seed=2)])


def _ort_session(path, outputs: list[str] | None = None) -> ort.InferenceSession:
    proto = onnx.load(str(path))
    for name in outputs or []:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_tiny_mobilenet_v2_exports_and_runtime_equals_pytorch(quantized_tiny, tmp_path):
    _, q = quantized_tiny
    x = _images(16, seed=3)
    path = eo.export_onnx(q, tmp_path / "m.onnx", x[:1])  # the export check passes
    kernels = census(path)["int8_ops"]
    assert kernels.get("QLinearConv") == 8 and kernels.get("QLinearAdd") == 2
    session = _ort_session(path)
    deployed = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        simulated = q(x).numpy()
    # the float Linear output: float32 rounding only, far below one step of its input grid
    step = float(q.get_submodule("fc").weight_scale.max()) * 255 * 1e-4
    assert np.abs(deployed - simulated).max() <= step
    assert (deployed.argmax(1) == simulated.argmax(1)).all()


def test_every_quantized_tensor_is_bit_exact_in_the_runtime(quantized_tiny, tmp_path):
    _, q = quantized_tiny
    x = _images(4, seed=4)
    path = eo.export_onnx(q, tmp_path / "m.onnx", x[:1])
    names = [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"]
    codes = []
    hooks = [m.register_forward_hook(lambda mod, i, o: codes.append(
        (torch.round(o / mod.scale) + mod.zero_point.float()).numpy()))
        for m in q.modules() if isinstance(m, ActQuant)]
    with torch.no_grad():
        q(x)
    for hook in hooks:
        hook.remove()
    session = _ort_session(path, names)
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[1:]
    assert len(outputs) == len(codes) == len(names) > 10
    for ours, theirs in zip(codes, outputs):
        np.testing.assert_array_equal(ours, theirs.astype(np.float32))


def test_dead_channel_bias_widens_weight_scale_instead_of_overflowing(quantized_tiny):
    model, q = quantized_tiny
    layer = q.get_submodule("blocks.0.depthwise.0")
    bound = int32_bias_bound(layer.weight_q[0].numel())
    assert int(layer.bias_q.abs().max()) <= bound
    assert abs(float(layer.bias()[3]) - 3.0) < 1e-3  # the dead channel still outputs its bias
    assert int(layer.weight_q[3].abs().max()) == 0  # its ~0 weights round to 0 on the wide scale


def test_fused_kernels_are_attached_where_the_runtime_fuses(quantized_tiny):
    _, q = quantized_tiny
    fused = [m for m in q.modules() if isinstance(m, QuantizedWeightLayer) and m.fused]
    assert len(fused) == 8  # every conv; the Linear writes float (no output quantizer)
    assert sum(isinstance(m, QuantizedAdd) for m in q.modules()) == 2


def test_bias_safe_weight_scale_against_naive_loop():
    bias = torch.tensor([0.5, 3.0, -2.0])
    scale = torch.tensor([1e-3, 1e-14, 0.0])
    widened = bias_safe_weight_scale(bias, torch.tensor(0.02), scale, fan_in=9)
    for i in range(3):
        needed = abs(float(bias[i])) / (0.02 * int32_bias_bound(9) / 2)
        assert float(widened[i]) == pytest.approx(max(float(scale[i]), needed))
        assert abs(float(bias[i]) / (0.02 * float(widened[i]))) <= int32_bias_bound(9) + 1


def test_qlinear_add_matches_onnx_runtime():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 8, 40, 40)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 8, 40, 40)).astype(np.uint8)
    for sa, za, sb, zb, sc, zc in [(0.11, 120, 0.07, 131, 0.17, 125), (0.3, 3, 0.02, 250, 0.05, 0)]:
        deployed = _ort_add(a, b, sa, za, sb, zb, sc, zc)
        ours = qlinear_add(torch.tensor(a).float(), torch.tensor(b).float(), (sa, za), (sb, zb),
                           (sc, zc), 0, 255)
        np.testing.assert_array_equal(ours.numpy(), deployed.astype(np.float32))


def _ort_add(a, b, sa, za, sb, zb, sc, zc) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(v, dtype=t), n) for v, t, n in [
        (sa, np.float32, "sa"), (za, np.uint8, "za"), (sb, np.float32, "sb"),
        (zb, np.uint8, "zb"), (sc, np.float32, "sc"), (zc, np.uint8, "zc")]]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
             helper.make_node("Add", ["ad", "bd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"])]
    graph = helper.make_graph(nodes, "add", [
        helper.make_tensor_value_info("a", TensorProto.UINT8, None),
        helper.make_tensor_value_info("b", TensorProto.UINT8, None)],
        [helper.make_tensor_value_info("cq", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a, "b": b})[0]


def test_export_check_names_the_first_layer_that_diverges(quantized_tiny, tmp_path, monkeypatch):
    from edgeopt.errors import ExportError

    _, q = quantized_tiny
    layer = q.get_submodule("blocks.1.expand.0")
    exact = layer._fused_forward

    def off_by_steps(x, fused):  # PyTorch now differs from the runtime in this layer only
        return exact(x, fused) + 40 * fused.output.scale

    monkeypatch.setattr(layer, "_fused_forward", off_by_steps)
    with pytest.raises(ExportError, match=r"differs from PyTorch.*first quantized tensor that "
                       r"differs is the output of 'blocks\.1\.expand\.0' \(Conv2d\)") as error:
        eo.export_onnx(q, tmp_path / "m.onnx", _images(1, seed=5))
    assert "quantization steps" in str(error.value)
    assert not (tmp_path / "m.onnx").exists()
