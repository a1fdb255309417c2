"""Integer-only C99 for a quantized model: one static arena, weights as const arrays, a host self-test.

    info = eo.export_c(quantized, "out/c", example_input)      # or build_c(graph, out_dir, test_inputs=...)
    info.flash_bytes, info.ram_bytes, info.arena, info.layers

Files written: model.h / model.c (the model: `edgeopt_model_invoke`, no stdio, no heap), edgeopt_kernels.h /
.c (the kernels), selftest.c + selftest_data.h (host main: the reference's outputs for embedded inputs) and
a Makefile whose `host` target builds with gcc and runs the self-test. model.c calls
`EDGEOPT_LAYER_END(i)` after layer i (empty unless the build defines it) so a board can time layers.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deploy import reference
from edgeopt.deploy.c.compress import choose as choose_forms
from edgeopt.deploy.c.emit import emit_ops
from edgeopt.deploy.c.plan import Plan, plan_memory
from edgeopt.deploy.ir import Graph
from edgeopt.errors import ConfigTypeError, ExportError, invalid

RUNTIME = Path(__file__).parent / "runtime"
RUNTIME_FILES = ("edgeopt_kernels.h", "edgeopt_kernels.c", "edgeopt_x86.h", "edgeopt_arm.h")
COMPRESSED_RUNTIME = ("edgeopt_kernels_compressed.h", "edgeopt_kernels_compressed.c")  # compress.py's forms
HOST_TARGETS = ("host",)


@dataclass
class CExport:
    """What export_c wrote and what it costs. Built for an MCU target (its toolchain found): flash_bytes and
    ram_bytes are the linked image's (code + constants; static data with the arena). Otherwise flash_bytes
    counts the model's constants (no code) and ram_bytes is the arena."""

    out_dir: Path
    files: list[str]
    flash_bytes: int  # weights, biases, requantization tables and layer descriptors (code not counted)
    ram_bytes: int  # the static arena, which holds the input (edgeopt_model_input())
    io_bytes: int  # the caller's output buffer
    weight_bytes: int
    arena: dict[str, tuple[int, int]]  # buffer -> (offset, bytes)
    peak_live_bytes: int  # lower bound: the most activation bytes alive at one time
    layers: list[dict[str, Any]] = field(default_factory=list)  # name, kind, macs, weight_bytes, weight_form
    pow2: bool = False
    target: str = "host"
    test_inputs: int = 0
    arena_bytes: int = 0
    image: dict[str, int] | None = None  # arm-none-eabi-size of the target build (MCU targets, toolchain found)

    @property
    def macs(self) -> int:
        return sum(layer["macs"] for layer in self.layers)


def export_c(model: Any, out_dir: str | Path, example_input: Any, target: str = "host", *,
             calibration: Any = None, test_inputs: Any = None, pow2: bool | None = None,
             compress_weights: bool = True) -> CExport:
    """Lower a quantized model (eo.apply(model, QuantConfig(...))) and write its C99 sources to out_dir.

    calibration: float inputs that set the int8 range of the float model output (default: example_input).
    test_inputs: float inputs (model layout) for the self-test (default: calibration / example_input).
    pow2: shift-only requantization; None uses it when every scale is a power of two.
    compress_weights: store conv / fully connected weights sparse or clustered where that is smaller
    (edgeopt.deploy.c.compress; lossless); False keeps them dense (4-bit layers packed).
    """
    from edgeopt.deploy.lower import lower_model
    from edgeopt.deploy.targets import names

    valid = ("host", *names())
    if target not in valid:
        raise invalid("export_c.target", f"one of {', '.join(valid)}", target)
    calibration = example_input if calibration is None else calibration
    graph = lower_model(model, example_input, calibration)
    samples = calibration if test_inputs is None else test_inputs
    data = samples.detach().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples)
    x_int8 = reference.quantize_input(graph, data)
    info = build_c(graph, out_dir, test_inputs=x_int8, pow2=pow2, compress_weights=compress_weights)
    info.target = target
    if target != "host":
        _measure_image(info, target, x_int8[:1])
    return info


def _measure_image(info: CExport, target: str, x_int8: np.ndarray) -> None:
    """Link the sources for an MCU target and take flash and RAM from the image, where the toolchain exists."""
    import tempfile

    from edgeopt.deploy import mcu
    from edgeopt.deploy.targets import get_target

    spec = get_target(target)
    if not spec.is_mcu or mcu.toolchain_missing() is not None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        elf = mcu.build_elf(info.out_dir, spec, x_int8.reshape(len(x_int8), -1), Path(tmp) / "model.elf")
        info.image = mcu.image_size(elf)
    info.flash_bytes, info.ram_bytes = info.image["flash_bytes"], info.image["static_ram_bytes"]


def build_c(graph: Graph, out_dir: str | Path, example_input: Any = None, *, test_inputs: Any = None,
            pow2: bool | None = None, compress_weights: bool = True) -> CExport:
    """Write C99 for an IR graph (or a quantized nn.Module with example_input) to out_dir.

    test_inputs: int8 arrays (N, input size) in the IR's NHWC layout, embedded with the reference's
    outputs for the self-test.
    """
    if not isinstance(graph, Graph):
        if example_input is None:
            raise ConfigTypeError("build_c needs example_input when given a model instead of an IR Graph.")
        from edgeopt.deploy.lower import lower_model

        graph = lower_model(graph, example_input)
        if test_inputs is None:
            data = example_input.detach().cpu().numpy() if hasattr(example_input, "detach") else example_input
            test_inputs = reference.quantize_input(graph, np.asarray(data))
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ExportError(f"the C back end handles one input and one output; the graph has {len(graph.inputs)} "
                          f"and {len(graph.outputs)}.")
    pow2 = reference.is_pow2_graph(graph) if pow2 is None else bool(pow2)
    plan = plan_memory(graph, choose_forms(graph) if compress_weights else None)
    emitted = emit_ops(graph, plan, pow2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tests = _test_vectors(graph, test_inputs, pow2)
    files = _write(out, graph, plan, emitted, tests, pow2)
    out_t = graph.tensors[graph.outputs[0]]
    layers = [{"name": op.name or op.outputs[0], "kind": op.kind, "macs": int(e.macs),
               "weight_bytes": int(e.weight_bytes), **({"weight_form": e.weight_form} if e.weight_form else {})}
              for op, e in zip(graph.ops, emitted)]
    return CExport(out, files, sum(e.const_bytes for e in emitted), plan.arena_bytes, out_t.size,
                   sum(e.weight_bytes for e in emitted),
                   {b: (plan.offsets[b], plan.sizes[b]) for b in plan.offsets}, plan.peak_live_bytes(),
                   layers, pow2, "host", len(tests[0]), plan.arena_bytes)


def _test_vectors(graph: Graph, test_inputs: Any, pow2: bool) -> tuple[np.ndarray, np.ndarray]:
    size = graph.tensors[graph.inputs[0]].size
    if test_inputs is None:
        return np.zeros((0, size), np.int8), np.zeros((0, graph.tensors[graph.outputs[0]].size), np.int8)
    x = np.asarray(test_inputs)
    if x.dtype != np.int8:
        raise ConfigTypeError(f"build_c.test_inputs must be int8 arrays in the IR layout; got {x.dtype}.")
    x = x.reshape(-1, size)
    y = np.stack([reference.run(graph, row, pow2=pow2)[0].reshape(-1) for row in x])
    return x, y


def _write(out: Path, graph: Graph, plan: Plan, emitted: list, tests: tuple, pow2: bool) -> list[str]:
    from edgeopt.deploy.c import sources

    for name in (*RUNTIME_FILES, *COMPRESSED_RUNTIME):
        shutil.copyfile(RUNTIME / name, out / name)
    texts = {
        "model.h": sources.model_h(graph, plan, pow2),
        "model.c": sources.model_c(graph, plan, emitted),
        "selftest_data.h": sources.selftest_data_h(*tests),
        "selftest.c": sources.SELFTEST_C,
        "Makefile": sources.MAKEFILE,
    }
    for name, text in texts.items():
        (out / name).write_text(text)
    return sorted([*RUNTIME_FILES, *COMPRESSED_RUNTIME, *texts])


def run_host(out_dir: str | Path, repeats: int = 0, timeout_s: float = 300.0) -> str:
    """`make host` in out_dir (gcc); with repeats, also time that many inferences. Returns what it printed."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        raise ExportError("building the C self-test needs gcc and make on PATH.")
    args = ["make", "-s", "-C", str(out_dir), "host"] + ([f"REPEATS={repeats}"] if repeats else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise ExportError(f"the C self-test failed in {out_dir}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout
