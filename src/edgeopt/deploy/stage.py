"""`edgeopt deploy`: one stage of a run folder built for a target and measured there.

MCU targets: the stage's int8 ONNX file is lowered to the integer IR, written as C, built with
arm-none-eabi-gcc for the target's core and run on the emulated board with the run's test inputs;
flash and RAM come from the linked image, instructions from the emulator, and the outputs are
checked against edgeopt's integer reference (bit for bit) and the ONNX file (top-1).
x86-ort: the stage's ONNX file measured in ONNX Runtime on this CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deploy.targets import Target, fits, get_target
from edgeopt.errors import ConfigError, DataError, ExportError

TEST_INPUTS = "test_inputs.npz"


def deploy_stage(run_dir: str | os.PathLike[str], stage: str, target: str,
                 out_dir: str | os.PathLike[str], *, max_inputs: int = 20) -> dict[str, Any]:
    """Build and measure `stage` of `run_dir` on `target`; writes out_dir/deploy.json (and, for
    MCU targets, the C sources and the ELF image). Everything is validated before any work and
    nothing is written on a refusal."""
    from edgeopt.atomic import atomic_dir

    spec = get_target(target)
    onnx_path, row = _stage_onnx(Path(run_dir), stage)
    if spec.is_mcu:
        _require_int8(onnx_path, stage)
        from edgeopt.deploy.mcu import require_toolchain

        require_toolchain()
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, int) or max_inputs < 1:
        raise ConfigError(f"deploy max_inputs must be a positive int; got {max_inputs!r}.")
    x, y = load_test_inputs(Path(run_dir), max_inputs)
    with atomic_dir(out_dir) as work:
        if spec.is_mcu:
            result = _deploy_mcu(onnx_path, spec, x, y, work)
        else:
            result = _deploy_host(onnx_path, spec, x, y, row.get("peak_activation_bytes"))
        result = {"target": spec.name, "stage": stage, "run_dir": str(run_dir),
                  "onnx": onnx_path.name, **result, "target_profile": spec.to_dict()}
        (work / "deploy.json").write_text(json.dumps(result, indent=2, default=_plain))
    return result


def _stage_onnx(run_dir: Path, stage: str) -> tuple[Path, dict[str, Any]]:
    metrics = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} does not exist.")
    if not metrics.is_file():
        raise ConfigError(f"run folder {str(run_dir)!r} has no metrics.json: give the folder "
                          "`edgeopt optimize --out DIR` wrote.")
    try:
        rows = {row["name"]: row for row in json.loads(metrics.read_text())["stages"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{metrics} is not an edgeopt metrics file ({exc}).") from None
    if stage not in rows:
        raise ConfigError(f"stage must be one of {', '.join(rows)} (the stages of "
                          f"{run_dir}); got {stage!r}.")
    path = run_dir / rows[stage]["onnx"]
    if not path.is_file():
        raise ConfigError(f"stage {stage!r}: its ONNX file {path} is missing from the run folder.")
    return path, rows[stage]


def _require_int8(onnx_path: Path, stage: str) -> None:
    """MCU targets run integer-only code: the stage must be an int8 QDQ graph."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    if "QuantizeLinear" not in ops:
        raise ConfigError(f"stage {stage!r} is a float model; MCU targets need an int8 stage "
                          "(technique quantize, W8A8), or use --target x86-ort.")


def load_test_inputs(run_dir: Path, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The run's test inputs (float, the model's layout) and labels: test_inputs.npz, or the
    recipe's built-in data set for run folders written before that file existed."""
    path = run_dir / TEST_INPUTS
    if path.is_file():
        with np.load(path) as saved:
            x, y = saved["x"][:limit], (saved["y"][:limit] if "y" in saved else None)
        return x, y
    recipe = json.loads((run_dir / "metrics.json").read_text()).get("recipe", {})
    data = recipe.get("data", "mnist5k")
    if not isinstance(data, str):
        raise DataError(f"run folder {run_dir} has no {TEST_INPUTS} and its data set is the "
                        "user's own: rerun `edgeopt optimize` to record the test inputs.")
    from edgeopt import datasets

    test = datasets.load(data, seed=int(recipe.get("seed", 0))).test
    x, y = test.tensors[0][:limit].numpy(), test.tensors[1][:limit].numpy()
    return x, (y if y.ndim == 1 else None)


def _deploy_mcu(onnx_path: Path, target: Target, x: np.ndarray, y: np.ndarray | None,
                work: Path) -> dict[str, Any]:
    from edgeopt.deploy import reference
    from edgeopt.deploy.lower import lower_onnx

    # The model's float output gets its int8 range from these inputs' ONNX outputs.
    graph = lower_onnx(onnx_path, calibration=x)
    x_int8 = reference.quantize_input(graph, x).reshape(len(x), -1)
    result = run_graph_on_target(graph, target, x_int8, work)
    outputs = result.pop("outputs")
    expected = np.stack([reference_output(graph, row) for row in x_int8])
    onnx_out = _onnx_outputs(onnx_path, x)
    out_q = graph.tensors[graph.outputs[0]].qparams
    dequantized = (outputs.astype(np.float32) - int(out_q.zero_point)) * float(out_q.scale)
    from edgeopt.deploy.budget import predicted_speed

    return {
        **result,
        # at the target's assumed clock: qemu counts instructions, not cycles
        "latency_ms": target.latency_ms(result["instructions_per_inference"]),
        **predicted_speed(graph, target),  # what a search predicted for this graph
        "inputs": len(x),
        "bit_exact_with_reference": bool(np.array_equal(outputs, expected)),
        "outputs_differing_from_reference": int((outputs != expected).any(axis=1).sum()),
        "top1_agreement_with_onnx": agreement(outputs, onnx_out),
        "max_abs_diff_with_onnx": float(np.abs(dequantized - onnx_out).max()),
        "accuracy": None if y is None else float((outputs.argmax(1) == y).mean()),
    }


def run_graph_on_target(graph: Any, target: Target, x_int8: np.ndarray,
                        work: Path, compress_weights: bool = True) -> dict[str, Any]:
    """C for `graph` built for `target` in work/c and work/build, run on the emulated board with
    the int8 inputs `x_int8` (N, input size): image sizes, instructions, the int8 outputs.
    compress_weights=False stores every weight dense (see export_c)."""
    from edgeopt.deploy import build_c
    from edgeopt.deploy.mcu import build_elf, image_size, run_elf

    export = build_c(graph, work / "c", test_inputs=x_int8, compress_weights=compress_weights)
    elf = build_elf(work / "c", target, x_int8, work / "build" / "model.elf")
    board = run_elf(elf, target, timeout_s=60.0 + 30.0 * len(x_int8))
    size = image_size(elf)
    # The input lives in the arena (main.c writes it through edgeopt_model_input()), as in TFLite Micro.
    ram = size["static_ram_bytes"] + board.stack_bytes
    return {
        "flash_bytes": size["flash_bytes"], "ram_bytes": ram,
        "static_ram_bytes": size["static_ram_bytes"], "stack_bytes": board.stack_bytes,
        "arena_bytes": export.arena_bytes or export.ram_bytes,
        "weights_flash_bytes": export.flash_bytes,  # constants only: build_c without a target
        "peak_live_bytes": export.peak_live_bytes,
        "instructions_per_inference": int(np.median(board.instructions)),
        "instructions_min_max": [min(board.instructions), max(board.instructions)],
        "layers": _layers(export, board.layer_instructions),
        "emulator": f"qemu-system-arm -M {target.qemu_machine} -icount shift=6",
        **fits(target, size["flash_bytes"], ram),
        "outputs": board.outputs,
    }


def reference_output(graph: Any, row: np.ndarray) -> np.ndarray:
    """edgeopt's integer reference on one int8 input row: the flat int8 output."""
    from edgeopt.deploy import reference

    shape = graph.tensors[graph.inputs[0]].shape
    return np.asarray(reference.run(graph, row.reshape(shape))[0], np.int8).reshape(-1)


def _onnx_outputs(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import torch
    from torch.utils.data import TensorDataset

    from edgeopt.runtime.measure import predict

    outputs, _ = predict(onnx_path, TensorDataset(torch.from_numpy(np.asarray(x, np.float32))))
    return outputs.reshape(len(x), -1)


def agreement(board: np.ndarray, onnx_out: np.ndarray) -> float:
    """Top-1 agreement of int8 outputs with float outputs (same order of classes)."""
    return float((board.reshape(len(board), -1).argmax(1) == onnx_out.argmax(1)).mean())


def _layers(export: Any, counts: list[list[int]]) -> list[dict[str, Any]]:
    """Per-layer figures of the C export, with instructions where the board reported them."""
    layers = [dict(layer) if isinstance(layer, dict) else {"layer": str(layer)}
              for layer in getattr(export, "layers", []) or []]
    if counts and all(len(c) == len(layers) for c in counts):
        for index, layer in enumerate(layers):
            layer["instructions"] = int(np.median([c[index] for c in counts]))
    return layers


def _deploy_host(onnx_path: Path, target: Target, x: np.ndarray, y: np.ndarray | None,
                 peak_activation_bytes: int | None) -> dict[str, Any]:
    """ONNX Runtime on this CPU: the file is the 'flash', the runtime's peak int8 activation
    memory (from the run's profile) the RAM; no instruction count."""
    import torch
    from torch.utils.data import TensorDataset

    from edgeopt.runtime.measure import measure

    tensors = [torch.from_numpy(np.asarray(x, np.float32))]
    if y is not None:
        tensors.append(torch.from_numpy(np.asarray(y)).long())
    m = measure(onnx_path, TensorDataset(*tensors), threads=1, warmup=10, runs=100)
    return {"flash_bytes": m.size_bytes, "ram_bytes": peak_activation_bytes,
            "instructions_per_inference": None,
            "latency_ms": m.latency_ms, "runs_int8": m.runs_int8, "inputs": len(x),
            "top1_agreement_with_onnx": 1.0, "bit_exact_with_reference": None,
            "accuracy": m.accuracy, "runtime": m.to_dict(),
            **fits(target, m.size_bytes, peak_activation_bytes)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise ExportError(f"deploy.json cannot hold a {type(value).__name__}.")
