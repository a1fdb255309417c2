"""Where edgeopt's .tflite (TFLite's integer arithmetic) and the int8 ONNX file (ONNX Runtime) part.

Two views on a real CNN of real_models.py (README, "Why the gap"):
1. op by op: each reference kernel run on ONNX Runtime's own int8 inputs (every QuantizeLinear
   output added as a graph output) against ONNX Runtime's int8 output: the step differences;
2. the whole chain: top-1 agreement with ONNX Runtime and fp32, with TFLite's double rounding
   (MultiplyByQuantizedMultiplier) and with a single rounding of acc x multiplier.

    .venv/bin/python bench/bench_tflite_gap.py --case mobilenetv2-dogs --inputs 50
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import real_models
import torch

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.lower import lower_onnx
from edgeopt.export import tflite


def single_rounding(x: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x * mult * 2^(shift - 31) rounded once, half away from zero (TFLITE_SINGLE_ROUNDING)."""
    product = np.asarray(x, np.int64) * np.asarray(mult, np.int64)  # |x|, |mult| < 2^31
    total = 31 - np.asarray(shift, np.int64)
    half = np.int64(1) << (total - 1)
    return np.where(product >= 0, (product + half) >> total, -((-product + half) >> total))


def _session(path: Path, names: list[str]) -> ort.InferenceSession:
    proto = onnx.load(str(path))
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def per_op(graph, values: dict[str, np.ndarray], xq: np.ndarray) -> list[str]:
    """Each op on ONNX Runtime's int8 inputs: % of values equal, +1, -1, more than one step off."""
    def int8(name: str, i: int) -> np.ndarray:
        if name == graph.inputs[0] and name not in values:
            return xq[i:i + 1].astype(np.int64)
        v = values[name][i:i + 1].astype(np.int64) - 128
        return v.transpose(0, 2, 3, 1) if v.ndim == 4 else v

    lines = []
    for op in graph.ops:
        out = op.outputs[0]
        acts = [k for k in op.inputs if not graph.tensors[k].is_constant]
        if out not in values or not all(k in values or k == graph.inputs[0] for k in acts):
            continue
        counts = collections.Counter()
        for i in range(len(xq)):
            args = [reference._constant(graph.tensors[k]) if graph.tensors[k].is_constant
                    else int8(k, i).reshape(graph.tensors[k].shape) for k in op.inputs]
            ours = reference.KERNELS[op.kind](graph, op, args, False).astype(np.int64)
            counts.update(np.clip(ours.reshape(-1) - int8(out, i).reshape(-1), -2, 2).tolist())
        total = sum(counts.values())
        lines.append(f"| {out} | {op.kind} {op.attrs.get('activation', '')} | "
                     + " | ".join(f"{100 * counts[k] / total:.3f}" for k in (0, 1, -1))
                     + f" | {100 * (counts[2] + counts[-2]) / total:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", default="mobilenetv2-dogs")
    parser.add_argument("--inputs", type=int, default=50)
    args = parser.parse_args()
    case = real_models.load(args.case, n_eval=args.inputs, n_calib=32)
    q = eo.apply(case.model, eo.QuantConfig(), data=case.calib)
    x = torch.cat(case.eval_inputs)
    with torch.no_grad():
        fp32 = torch.cat([case.model(b) for b in x.split(10)]).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = eo.export_onnx(q, Path(tmp) / "int8.onnx", case.example_input)
        graph = lower_onnx(path, torch.cat(case.calib))
        model_outputs = {o.name for o in onnx.load(str(path)).graph.output}
        names = [t for t, v in graph.tensors.items() if not v.is_constant and t not in model_outputs]
        known = {o for node in onnx.load(str(path)).graph.node for o in node.output}
        session = _session(path, [t for t in names if t in known])
        results = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    values = dict(zip([o.name for o in session.get_outputs()], results))
    xq = tflite.quantize_inputs(tflite.graph_to_tflite(graph), x.numpy())
    print("| tensor | op | same % | +1 % | -1 % | off by more % |\n|---|---|---|---|---|---|")
    print("\n".join(per_op(graph, values, xq)))
    onnx_top1 = results[0].argmax(1)
    double = reference.multiply_by_quantized_multiplier
    for label, rounding in (("double rounding (TFLite)", double), ("single rounding", single_rounding)):
        reference.multiply_by_quantized_multiplier = rounding
        top1 = np.array([reference.run(graph, row[None])[0].reshape(-1).argmax() for row in xq])
        print(f"{label}: top-1 agreement with ONNX Runtime {np.mean(top1 == onnx_top1):.3f}, "
              f"with fp32 {np.mean(top1 == fp32.argmax(1)):.3f}")
    reference.multiply_by_quantized_multiplier = double
    print(f"ONNX Runtime: top-1 agreement with fp32 {np.mean(onnx_top1 == fp32.argmax(1)):.3f}")


if __name__ == "__main__":
    main()
