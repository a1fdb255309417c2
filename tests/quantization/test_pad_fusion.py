import onnx
import torch
import torch.nn as nn
from qhelpers import images, run_onnx

import edgeopt as eo
from edgeopt.runtime.inspect import census


def same_padded_cnn() -> nn.Module:
    """TensorFlow 'SAME' strided convolutions: ZeroPad2d (asymmetric) + Conv2d(padding=0)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 8, 3, 2), nn.ReLU6(),
        nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(8, 8, 5, 2, groups=8), nn.ReLU6(),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()


def test_zero_pads_become_the_integer_convolutions_padding(tmp_path):
    model, x = same_padded_cnn(), images(64, seed=5)
    q = eo.apply(model, eo.QuantConfig(), data=[x])
    path = eo.export_onnx(q, tmp_path / "pad.onnx", x[:1])  # checks ORT against PyTorch
    assert "Pad" not in [n.op_type for n in onnx.load(path).graph.node]
    assert census(path)["all_ops"].get("QLinearConv", 0) == 3
    with torch.no_grad():
        assert abs(run_onnx(path, x) - q(x).numpy()).max() < 1e-4
