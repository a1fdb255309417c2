"""export_onnx: ORT matches PyTorch, dynamic batch, atomic output, clear errors, custom ops."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxscript import opset18 as op
from torch import nn

from edgeopt.errors import ConfigError, ExportError, OutputError
from edgeopt.export.onnx import export_onnx, register_translation, unregister_translation


class ConvNet(nn.Module):
    """Conv-BN-ReLU-pool-Linear: the batch-norm folds into the conv on export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.body(x))  # the residual add
        return self.fc(x.mean((2, 3)))


def _ort(path: object, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _trained_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():  # non-trivial running stats so the folded BN is really tested
        model(torch.randn(16, 1, 8, 8) * 3 + 1)
    return model


def test_onnx_matches_pytorch_and_batch_is_dynamic(tmp_path):
    model = _trained_bn(ConvNet())  # left in training mode on purpose
    path = export_onnx(model, tmp_path / "sub" / "net.onnx", torch.randn(1, 1, 8, 8))
    assert model.training, "the training flag must be restored"
    x = torch.randn(3, 1, 8, 8)  # batch 3 through a model exported at batch 1
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_ort(path, x), expected, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.onnx"]  # weights embedded
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["producer"] == "edgeopt" and props["edgeopt.dynamic_batch"] == "true"


def test_residual_model_exports_and_checks(tmp_path):
    model = ResNet().eval()
    path = export_onnx(model, tmp_path / "res.onnx", torch.randn(2, 1, 6, 6), check=True)
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, x), model(x).numpy(), atol=1e-4, rtol=1e-4)
    assert "Add" in {n.op_type for n in onnx.load(path).graph.node}


def test_unwritable_directory_raises_before_export_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot be written"):
        export_onnx(ConvNet(), blocker / "out" / "net.onnx", torch.randn(1, 1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


class Eig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x @ x.transpose(-1, -2)).real


def test_unsupported_op_is_named_and_no_file_is_left(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), Eig())
    with pytest.raises(ExportError, match=r"linalg_eig.*module '1' \(Eig\)"):
        export_onnx(model, tmp_path / "eig.onnx", torch.randn(2, 3, 3))
    assert list(tmp_path.iterdir()) == []


class BatchOneBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] == 1 else x  # exported "dynamic", it would bake this branch


def test_model_wrong_at_other_batches_falls_back_to_static_batch(tmp_path):
    with pytest.warns(UserWarning, match="fixed batch of 1"):
        path = export_onnx(BatchOneBranch(), tmp_path / "s.onnx", torch.randn(1, 4))
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgeopt.dynamic_batch"] == "false"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


@torch.library.custom_op("edgeopt_test::fake_quant", mutates_args=())
def fake_quant(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


@fake_quant.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def _qdq(x, scale: float):
    s = op.Constant(value_float=scale)
    zero = op.Cast(op.Constant(value_int=0), to=onnx.TensorProto.INT8)
    return op.DequantizeLinear(op.QuantizeLinear(x, s, zero), s, zero)


def _wrong(x, scale: float):
    return op.Mul(x, op.Constant(value_float=2.0))


class FakeQuantNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.ops.edgeopt_test.fake_quant(x, 0.05))


def test_registered_translation_is_used_and_checked(tmp_path):
    register_translation(torch.ops.edgeopt_test.fake_quant, _qdq)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_translation(torch.ops.edgeopt_test.fake_quant.default, _qdq)
        path = export_onnx(FakeQuantNet(), tmp_path / "q.onnx", torch.randn(1, 4))
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert ops[:2] == ["QuantizeLinear", "DequantizeLinear"]
        register_translation(torch.ops.edgeopt_test.fake_quant, _wrong, replace=True)
        with pytest.raises(ExportError, match="max abs diff"):
            export_onnx(FakeQuantNet(), tmp_path / "wrong.onnx", torch.randn(1, 4))
        assert not (tmp_path / "wrong.onnx").exists()
    finally:
        unregister_translation(torch.ops.edgeopt_test.fake_quant)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(ConvNet(), "x.onnx", torch.randn(1, 1, 8, 8), opset=13)
    with pytest.raises(TypeError, match="example_input"):
        export_onnx(ConvNet(), "x.onnx", [1, 2, 3])  # type: ignore[arg-type]


def test_exporter_chatter_is_silenced(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the exporter fails the test
        export_onnx(nn.Linear(3, 2), tmp_path / "l.onnx", torch.randn(1, 3))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_exports_share_one_torchlib_registry_and_keep_no_translation_in_it(tmp_path):
    from torch.onnx._internal.exporter import _registration

    from edgeopt.export import onnx as exporter

    build = _registration.ONNXRegistry.__dict__["from_torchlib"]
    model, x = ConvNet().eval(), torch.randn(1, 1, 8, 8)
    first = export_onnx(model, tmp_path / "a.onnx", x).read_bytes()
    register_translation(torch.ops.edgeopt_test.fake_quant, _qdq)
    try:
        export_onnx(FakeQuantNet(), tmp_path / "q.onnx", torch.randn(1, 4))
    finally:
        unregister_translation(torch.ops.edgeopt_test.fake_quant)
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is build  # put back
    assert exporter._TORCHLIB  # built once, then copied
    assert not any(meta.is_custom for registry in exporter._TORCHLIB.values()
                   for metas in registry.functions.values() for meta in metas)
    assert export_onnx(model, tmp_path / "b.onnx", x).read_bytes() == first
