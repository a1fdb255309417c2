"""QDQ ONNX -> integer IR: layouts, fusions and the refusal of what the integer back end cannot run."""

import numpy as np
import onnx
import pytest
from deploy_models import inputs, quantized
from onnx import TensorProto, helper

from edgeopt.deploy.lower import lower_onnx
from edgeopt.errors import ExportError


def test_lenet5_lowers_to_fused_nhwc_ops():
    _, path = quantized("lenet5")
    graph = lower_onnx(path, calibration=inputs("lenet5", 4))
    assert [op.kind for op in graph.ops] == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "reshape",
                                             "fully_connected", "fully_connected", "fully_connected"]
    assert graph.tensors[graph.inputs[0]].shape == (1, 16, 16, 1)
    assert [op.attrs["activation"] for op in graph.ops if op.kind == "fully_connected"] == ["relu", "relu", "none"]
    conv = graph.tensors[graph.ops[0].inputs[1]]
    assert conv.shape == (6, 5, 5, 1) and conv.qparams.axis == 0  # OHWI, per output channel
    for t in graph.tensors.values():  # uint8 activations became int8 with zero point - 128
        assert t.is_constant or int(t.qparams.zero_point) in range(-128, 128)


def test_1d_series_become_height_one_images():
    _, path = quantized("tcn1d")
    graph = lower_onnx(path, calibration=inputs("tcn1d", 4))
    assert graph.tensors[graph.inputs[0]].shape == (1, 1, 32, 3)
    dilated = [op.attrs["dilation"] for op in graph.ops if op.kind == "conv2d"]
    assert (1, 4) in dilated and all(op.attrs.get("kernel", (1, 1))[0] == 1 for op in graph.ops if "kernel" in op.attrs)


def test_unsupported_op_names_node_and_type(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dequant"),
             helper.make_node("Sigmoid", ["d"], ["y"], name="my_sigmoid")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [scale, zero]),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="my_sigmoid.*Sigmoid.*supported: QuantizeLinear"):
        lower_onnx(tmp_path / "m.onnx")


def test_output_range_without_calibration_is_bounded_by_the_weights():
    _, path = quantized("lenet300")
    bounded = lower_onnx(path)
    calibrated = lower_onnx(path, calibration=inputs("lenet300", 16))
    wide, narrow = (float(g.tensors[g.outputs[0]].qparams.scale) for g in (bounded, calibrated))
    assert wide > narrow > 0 and np.isfinite(wide)
