"""Real pretrained networks shipped inside PyPI wheels (see bench/real_models.py), quantized
by edgeopt and run in ONNX Runtime: the export check passes and the deployed model agrees with
the fp32 one."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeopt as eo
from edgeopt.runtime import scores
from edgeopt.runtime.measure import measure, predict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import real_models  # noqa: E402


def _case(name: str, **sizes):
    if not real_models.available(name):
        pytest.skip(f"{name}: its package is not installed (make install installs it)")
    return real_models.load(name, **sizes)


def _fp32_and_int8(case, tmp_path, config):
    fp32 = eo.export_onnx(case.model, tmp_path / "fp32.onnx", case.example_input)
    quantized = eo.apply(case.model, config, data=case.calib)
    int8 = eo.export_onnx(quantized, tmp_path / "int8.onnx", case.example_input)  # checked
    return fp32, int8, quantized


def test_mini_xception_residual_cnn_int8_agrees_with_fp32(tmp_path):
    case = _case("mini-xception", n_eval=120, n_calib=32)
    fp32, int8, quantized = _fp32_and_int8(case, tmp_path, eo.QuantConfig())
    reference, _ = predict(fp32, case.eval_inputs)
    outputs, _ = predict(int8, case.eval_inputs)
    assert scores.agreement(outputs, reference) >= 0.9
    # simulated == deployed: the PyTorch quantized module computes what ONNX Runtime does
    with torch.no_grad():
        simulated = torch.cat([quantized(x) for x in case.eval_inputs]).numpy()
    step = _output_step(outputs)
    assert np.mean(np.abs(simulated - outputs) <= step * 1.01) >= 0.99
    m = measure(int8, case.eval_inputs[:4], runs=1, warmup=0)
    assert m.runs_int8 and m.int8_ops.get("QLinearAdd", 0) >= 3  # the residual adds
    assert m.size_bytes < 0.5 * measure(fp32, case.eval_inputs[:4], runs=1, warmup=0).size_bytes


def _output_step(outputs: np.ndarray) -> float:
    """The quantization step of a dequantized int8 output: its smallest gap between values."""
    gaps = np.diff(np.unique(outputs))
    return float(gaps[gaps > 1e-6].min())


def test_pesto_pitch_cnn_keeps_its_task_accuracy_in_int8(tmp_path):
    case = _case("pesto", n_eval=80, n_calib=32)
    fp32, int8, _ = _fp32_and_int8(case, tmp_path, eo.QuantConfig())
    reference, _ = predict(fp32, case.eval_inputs)
    outputs, _ = predict(int8, case.eval_inputs)
    base = case.task_metric(torch.from_numpy(reference))
    assert base > 0.9  # the real model works on these tones
    assert case.task_metric(torch.from_numpy(outputs)) >= base - 0.05
    assert np.isfinite(outputs).all()
