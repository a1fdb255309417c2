"""edgeopt's integer reference: TFLite's fixed-point rules, and agreement with ONNX Runtime's int8 file."""

import numpy as np
import onnxruntime as ort
import pytest
from deploy_models import POW2, SHAPES, inputs, quantized

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.ir import QParams, activation_range, quantize_multiplier
from edgeopt.deploy.lower import lower_onnx


def test_quantize_multiplier_reconstructs_the_real_multiplier():
    reals = np.array([0.5, 0.25, 1e-3, 0.75, 1.5, 1 - 1e-11, 3e-12, 0.0])
    mult, shift = quantize_multiplier(reals)
    assert mult.dtype == np.int32 and shift.dtype == np.int32
    assert list(mult[:2]) == [2**30, 2**30] and list(shift[:2]) == [0, -1]
    assert mult[5] == 2**30 and shift[5] == 1  # rounding up to 2^31 carries into the shift
    assert mult[6] == 0 and mult[7] == 0  # below 2^-31: TFLite's zero multiplier
    np.testing.assert_allclose(mult[:5] * 2.0 ** (shift[:5] - 31), reals[:5], rtol=1e-9)


def test_rounding_matches_a_naive_definition():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**20), 2**20, 2000)
    for exponent in (1, 3, 7):
        naive = np.sign(x) * np.floor(np.abs(x) / 2**exponent + 0.5)  # half away from zero
        np.testing.assert_array_equal(reference.rounding_divide_by_pot(x, exponent), naive)
    mult, shift = quantize_multiplier(0.0123)
    exact = x * 0.0123
    out = reference.multiply_by_quantized_multiplier(x, mult, shift)
    assert np.abs(out - exact).max() <= 1.0  # double rounding: within one step of the exact product


def test_activation_range_is_tflites():
    q = QParams.of(0.05, -100)
    assert activation_range("none", q) == (-128, 127)
    assert activation_range("relu", q) == (-100, 127)
    assert activation_range("relu6", q) == (-100, 20)  # -100 + round(6 / 0.05)
    with pytest.raises(ValueError, match="activation"):
        activation_range("gelu", q)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_reference_agrees_with_onnx_runtime(name):
    _, path = quantized(name)
    x = inputs(name, 40, seed=2).numpy()
    graph = lower_onnx(path, calibration=inputs(name, 16, seed=1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runtime = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    out = graph.tensors[graph.outputs[0]]
    ours = np.stack([reference.dequantize(out, reference.run(graph, row)[0]).reshape(-1)
                     for row in reference.quantize_input(graph, x)])
    assert (ours.argmax(1) == runtime.argmax(1)).mean() >= 0.975  # 39 of 40; 99.5 % is the bench's figure
    steps = np.abs(ours - runtime) / float(out.qparams.scale)
    assert np.median(steps) <= 0.75 and (steps <= 1.5).mean() >= 0.99  # ORT rounds in float, TFLite in fixed point


def test_power_of_two_scales_requantize_with_shifts_only():
    _, path = quantized("resnet8", *POW2)
    graph = lower_onnx(path, calibration=inputs("resnet8", 16, seed=1))
    assert reference.is_pow2_graph(graph)  # the calibrated output scale was rounded up to a power of two
    x = reference.quantize_input(graph, inputs("resnet8", 8, seed=3).numpy())
    shifted = [reference.run(graph, row, pow2=True)[0] for row in x]
    multiplied = [reference.run(graph, row)[0] for row in x]
    # the same scales, two rounding rules: within a step or two of each other, not always identical
    diff = np.abs(np.stack(shifted).astype(int) - np.stack(multiplied))
    assert diff.max() <= 3 and np.stack(shifted).std() > 1


def test_pow2_mode_refuses_scales_that_are_not_powers_of_two():
    _, path = quantized("lenet300")
    graph = lower_onnx(path, calibration=inputs("lenet300", 4))
    with pytest.raises(eo.errors.ExportError, match="power of two"):
        reference.run(graph, np.zeros(graph.tensors[graph.inputs[0]].size, np.int8), pow2=True)
