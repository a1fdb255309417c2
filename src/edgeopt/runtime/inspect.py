"""What ONNX Runtime really runs: the kernel census, the size on disk, the CPU it runs on.

A QDQ model proves nothing by itself: ORT fuses Q/DQ pairs into int8 kernels only where it can,
and runs the rest in fp32 between DQ and Q. So the census counts op types in the graph that ORT
writes after optimization (`SessionOptions.optimized_model_filepath`), not in the exported one.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from edgeopt.errors import ConfigError, ModelError, invalid

# Kernels that compute in integers (ORT CPU contrib ops included).
INT8_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QLinearConvTranspose",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
        "QAttention",
        "QEmbedLayerNormalization",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
    }
)
# Float kernels that do the bulk of the arithmetic (the ops int8 should have replaced).
FLOAT_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "NchwcConv",
        "Einsum",
        "Attention",
        "MultiHeadAttention",
        "LSTM",
        "GRU",
        "RNN",
    }
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "layout", "all")
_CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)


def check_model_path(path: str | os.PathLike[str], what: str) -> Path:
    """The path as a Path, or a clear error if it is not an existing file."""
    if not isinstance(path, str | os.PathLike):
        raise invalid(f"{what}.path", "a path to an .onnx file", path)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"{what}.path must be an existing .onnx file; {str(file)!r} does not exist. "
            "Export one with edgeopt.export_onnx first."
        )
    return file


def session_options(threads: int, optimization: str) -> Any:
    """ORT options for reproducible CPU timing: fixed intra-op threads, sequential, quiet."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise invalid("optimization", f"one of {', '.join(OPTIMIZATION_LEVELS)}", optimization)
    level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", None),
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if level is None:
        raise ConfigError(
            f"optimization 'layout' needs a newer onnxruntime than {ort.__version__}."
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3  # hide ORT's warnings (e.g. about saving NCHWc graphs)
    return options


def open_session(path: Path, options: Any) -> Any:
    """An ORT CPU session, with load failures turned into ModelError."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load {str(path)!r}: {str(exc)[:500]}") from exc


def census(path: str | os.PathLike[str], *, optimization: str = "all") -> dict[str, Any]:
    """Count the op types ORT runs after optimizing `path` on this machine.

    Returns {"int8_ops", "float_ops", "qdq_ops", "all_ops": {op_type: count}, "runs_int8"}.
    """
    file = check_model_path(path, "census")
    with tempfile.TemporaryDirectory(prefix="edgeopt-census-") as tmp:
        options = session_options(1, optimization)
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        open_session(file, options)
        return census_of(options.optimized_model_filepath)


def census_of(optimized_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The census of an already-optimized graph file (see `census`)."""
    model = onnx.load(str(optimized_path), load_external_data=False)
    counts = Counter(_kernel_name(node) for node in _all_nodes(model))
    int8 = {op: n for op, n in sorted(counts.items()) if op in INT8_OPS}
    floats = {op: n for op, n in sorted(counts.items()) if op in FLOAT_OPS}
    qdq = {op: n for op, n in sorted(counts.items()) if op in QDQ_OPS}
    return {
        "int8_ops": int8,
        "float_ops": floats,
        "qdq_ops": qdq,
        "all_ops": dict(sorted(counts.items())),
        "runs_int8": sum(int8.values()) > sum(floats.values()),
    }


def _kernel_name(node: onnx.NodeProto) -> str:
    """ORT's NCHWc layout ops reuse standard names (Conv) in their own domain: tell them apart."""
    if node.domain == "com.microsoft.nchwc" and not node.op_type.startswith("Reorder"):
        return f"Nchwc{node.op_type}"
    return node.op_type


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    graphs: list[Any] = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def size_on_disk(path: str | os.PathLike[str]) -> int:
    """Bytes of the .onnx file plus every external-data file its tensors reference."""
    file = check_model_path(path, "size_on_disk")
    model = onnx.load(str(file), load_external_data=False)
    total, seen = file.stat().st_size, set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None or location in seen:
            continue
        seen.add(location)
        data_file = file.parent / location
        if not data_file.is_file():
            raise ModelError(
                f"{str(file)!r} references external data {location!r}, which is missing; "
                "copy it next to the model or re-export with the weights embedded."
            )
        total += data_file.stat().st_size
    return total


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the SIMD / int8-relevant flags it has), from /proc/cpuinfo on Linux."""
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 says flags, ARM says features
            flags = set(value.split())
    name = name or platform.processor() or platform.machine() or "unknown"
    return name, tuple(f for f in _CPU_FLAGS if f in flags)
