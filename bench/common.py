"""Shared pieces of the benchmarks: zoo pairs, calibration tensors, ONNX Runtime's quantizer."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

import edgeopt as eo

PAIRS = [("lenet300", "mnist5k"), ("lenet5", "mnist5k"), ("dscnn", "mnist5k"),
         ("resnet8", "mnist5k"), ("tcn1d", "basic-motions")]


def ort_accuracy(model: torch.nn.Module, test, path: Path) -> float:
    """Top-1 of `model` on `test` from its ONNX file run in ONNX Runtime: every accuracy in the
    README's tables comes from the runtime, never from PyTorch."""
    exported = eo.export_onnx(model, path, test[0][0][None])
    return eo.measure(exported, test, runs=1, warmup=0).accuracy


def calibration_tensor(splits: eo.datasets.Splits, samples: int = 512) -> torch.Tensor:
    """The first `samples` training inputs: the same calibration set for every quantizer."""
    n = min(samples, len(splits.train))
    return torch.stack([splits.train[i][0] for i in range(n)])


def input_name(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def ort_quantize_static(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """ONNX Runtime's quantizer with its recommended settings for this CPU (QDQ, U8S8)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    name = input_name(pre)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{name: calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return out


def ort_quantize_dynamic(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def nncf_quantize(fp32: Path, out: Path, calib: torch.Tensor) -> Path | None:
    """NNCF's post-training quantization of the same ONNX file, where NNCF is installed."""
    try:
        import nncf
    except ImportError:
        return None
    name = input_name(fp32)
    dataset = nncf.Dataset([{name: calib[i:i + 1].numpy()} for i in range(len(calib))])
    quantized = nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=len(calib))
    onnx.save(quantized, str(out))
    return out
