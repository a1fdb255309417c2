"""Compact storage for sparse weights, so reported sizes reflect unstructured sparsity.

Dense tensors with zeros cost as much as without; this format stores each tensor either dense
or as a bitmap of non-zeros plus the non-zero values (whichever is smaller), inside a
deflate-compressed zip. It round-trips exactly: `load_sparse` gives back the ONNX model (to run
in ONNX Runtime) or the state dict.

    size = sparse_size_bytes(model)            # or an .onnx path / onnx.ModelProto
    save_sparse("model.onnx", "model.eosparse")
    onnx_model = load_sparse("model.eosparse")
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeopt.atomic import write_bytes
from edgeopt.errors import ConfigTypeError, ModelError

FORMAT = "edgeopt-sparse/1"
_NUMPY_ONNX_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                     onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL}


def encode_tensor(array: np.ndarray) -> tuple[str, list[bytes]]:
    """('dense', [raw]) or ('bitmap', [packed non-zero bitmap, non-zero values]), the smaller."""
    flat = np.ascontiguousarray(array).reshape(-1)
    nonzero = flat != 0
    sparse_bytes = (flat.size + 7) // 8 + int(nonzero.sum()) * flat.itemsize
    if sparse_bytes < flat.nbytes:
        return "bitmap", [np.packbits(nonzero).tobytes(), flat[nonzero].tobytes()]
    return "dense", [flat.tobytes()]


def decode_tensor(encoding: str, parts: list[bytes], dtype: str, shape: list[int]) -> np.ndarray:
    kind = np.dtype(dtype)
    size = int(np.prod(shape)) if shape else 1
    if encoding == "dense":
        return np.frombuffer(parts[0], dtype=kind).reshape(shape).copy()
    nonzero = np.unpackbits(np.frombuffer(parts[0], dtype=np.uint8), count=size).astype(bool)
    out = np.zeros(size, dtype=kind)
    out[nonzero] = np.frombuffer(parts[1], dtype=kind)
    return out.reshape(shape)


def encode(tensors: dict[str, np.ndarray], graph: bytes | None = None) -> bytes:
    """The archive bytes for `tensors` (and, for ONNX models, the graph without them)."""
    buffer = io.BytesIO()
    manifest: dict[str, Any] = {"format": FORMAT, "tensors": []}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for index, (name, array) in enumerate(tensors.items()):
            encoding, parts = encode_tensor(array)
            manifest["tensors"].append({"name": name, "dtype": array.dtype.str,
                                        "shape": list(array.shape), "encoding": encoding})
            for part_index, part in enumerate(parts):
                archive.writestr(f"t{index}.{part_index}", part)
        if graph is not None:
            archive.writestr("graph.onnx", graph)
            manifest["onnx"] = True
        archive.writestr("manifest.json", json.dumps(manifest))
    return buffer.getvalue()


def decode(blob: bytes) -> tuple[dict[str, np.ndarray], bytes | None]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        if manifest.get("format") != FORMAT:
            raise ModelError(f"not an {FORMAT} archive (format {manifest.get('format')!r}).")
        tensors = {}
        for index, entry in enumerate(manifest["tensors"]):
            count = 1 if entry["encoding"] == "dense" else 2
            parts = [archive.read(f"t{index}.{i}") for i in range(count)]
            tensors[entry["name"]] = decode_tensor(entry["encoding"], parts, entry["dtype"],
                                                   entry["shape"])
        graph = archive.read("graph.onnx") if manifest.get("onnx") else None
    return tensors, graph


def _split_onnx(proto: onnx.ModelProto) -> tuple[dict[str, np.ndarray], bytes]:
    """Initializers as arrays, and the model without them (initializers of exotic types stay)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    tensors, keep = {}, []
    for init in proto.graph.initializer:
        if init.data_type in _NUMPY_ONNX_TYPES and init.data_location != onnx.TensorProto.EXTERNAL:
            tensors[init.name] = numpy_helper.to_array(init)
        else:
            keep.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return tensors, proto.SerializeToString()


def _state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[name] = t.numpy()
    return out


def _archive(obj: Any) -> bytes:
    if isinstance(obj, nn.Module):
        return encode(_state_arrays(obj))
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.is_file():
            raise ConfigTypeError(f"sparse storage: {str(path)!r} is not a file.")
        obj = onnx.load(str(path))
    if isinstance(obj, onnx.ModelProto):
        tensors, graph = _split_onnx(obj)
        return encode(tensors, graph)
    raise ConfigTypeError("sparse storage needs a torch.nn.Module, an .onnx path or an "
                          f"onnx.ModelProto; got {type(obj).__name__}.")


def sparse_size_bytes(obj: nn.Module | onnx.ModelProto | str | os.PathLike[str]) -> int:
    """Bytes of the compact sparse archive of a model's weights (and graph, for ONNX)."""
    return len(_archive(obj))


def dense_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict stored densely (what zeros do not save)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def save_sparse(obj: nn.Module | onnx.ModelProto | str | os.PathLike[str],
                path: str | os.PathLike[str]) -> Path:
    """Write the compact archive (atomically) and return its path."""
    return write_bytes(Path(path), _archive(obj))


def load_sparse(path: str | os.PathLike[str]) -> onnx.ModelProto | dict[str, torch.Tensor]:
    """The ONNX model (for an archive of an ONNX model) or the state dict it stores."""
    tensors, graph = decode(Path(path).read_bytes())
    if graph is None:
        return {name: torch.from_numpy(array) for name, array in tensors.items()}
    proto = onnx.ModelProto.FromString(graph)
    proto.graph.initializer.extend(numpy_helper.from_array(a, name) for a, name in
                                   ((array, name) for name, array in tensors.items()))
    return proto
