"""Stored size of a model's weights, measured by writing them: a compressed container where each
tensor takes the smallest of a few lossless encodings, then every stream is entropy-coded.

Encodings per tensor (all exact; `load_compressed` gives back the same bits):
  raw        the values as they are
  codebook   a table of the distinct values + one index per element (Deep Compression's
             weight sharing; per layer, or one table per row when that is smaller)
  sparse_*   a bitmap of the nonzeros, then the nonzero values raw or through a codebook
Every stream is stored plain or LZMA-compressed (an LZ + range coder: the entropy-coding step),
whichever is smaller. The reported size is the byte length of the container, header included.
An ONNX source also stores its graph (without the weights), so the container restores a model
ONNX Runtime runs. One module for every technique: pruning's bitmaps and clustering's codebooks
are encodings of the same container, so a run reports one stored size.

    report = stored_size(model)                    # or a state dict, an .onnx path or ModelProto
    report.total_bytes, report.ratio               # vs the same tensors as dense float32
    save_compressed(model, "model.eoz"); state = load_compressed("model.eoz")
    save_compressed("m.onnx", "m.eoz"); proto = load_compressed("m.eoz")   # an onnx.ModelProto
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import lzma
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigTypeError, DataError

__all__ = ["StorageReport", "TensorRecord", "load_compressed", "save_compressed", "stored_size"]

MAGIC = b"EOZ2"
_MAX_TABLE = 1 << 16  # more distinct values than this: a codebook cannot pay off
_PROBE, _PROBE_ABOVE = 1 << 16, 1 << 18
_HEADER_CODEC = "lzma20"
_ENTROPY = contextvars.ContextVar("edgeopt_storage_entropy", default=True)


@dataclasses.dataclass
class TensorRecord:
    """How one tensor is stored."""

    name: str
    shape: list[int]
    dtype: str
    encoding: str  # raw | codebook | row_codebook, prefixed sparse_ when a bitmap is used
    numel: int
    nonzeros: int
    distinct: int  # distinct values (nonzero ones for sparse encodings); 0 when not counted
    index_bits: int  # bits per index before entropy coding (0 for raw)
    dense_bytes: int  # numel * element size: the uncompressed reference
    stored_bytes: int  # streams as stored (excluding the shared header)


@dataclasses.dataclass
class StorageReport:
    """The compressed stored size of a set of tensors."""

    tensors: list[TensorRecord]
    header_bytes: int  # the container's table of contents (and the ONNX graph, if any)
    total_bytes: int
    dense_bytes: int  # every tensor dense at its own dtype (float32 for float weights)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.total_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


# ---------------------------------------------------------------- streams


def _filters(codec: str) -> list[dict[str, Any]]:
    """'lzma<k>': LZMA2 at preset 9 with a 2^k-byte dictionary (sized to the stream, since a
    64 MiB default dictionary costs more to set up than small streams take to compress)."""
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << int(codec[4:])}]


def _compress(data: bytes) -> tuple[str, bytes]:
    """('lzma<k>', packed) or ('none', data), whichever is shorter.

    Large streams that a 64 KiB sample shows to be nearly incompressible (dense float
    mantissas) are stored plain without compressing the whole, which would take seconds.
    """
    if not data or not _ENTROPY.get():
        return "none", data
    codec = f"lzma{min(26, max(12, math.ceil(math.log2(len(data)))))}"
    if len(data) > _PROBE_ABOVE:
        sample = lzma.compress(data[:_PROBE], format=lzma.FORMAT_RAW, filters=_filters(codec))
        if len(sample) > 0.97 * _PROBE:
            return "none", data
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_filters(codec))
    return (codec, packed) if len(packed) < len(data) else ("none", data)


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "none":
        return data
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_filters(codec))


def _index_dtype(count: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if count <= 256 else np.uint16


def _codes_stream(codes: np.ndarray, count: int) -> tuple[dict[str, Any], bytes]:
    """Indices as bytes (what LZMA models best) or bit-packed, whichever stores smaller."""
    bits = max(1, math.ceil(math.log2(max(count, 2))))
    as_bytes = _compress(codes.astype(_index_dtype(count)).tobytes())
    unpacked = ((codes[:, None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1)
    as_bits = _compress(np.packbits(unpacked.astype(np.uint8).ravel(), bitorder="little")
                        .tobytes())
    if len(as_bits[1]) < len(as_bytes[1]):
        return {"bits": bits, "packed": True, "codec": as_bits[0]}, as_bits[1]
    return {"bits": bits, "packed": False, "codec": as_bytes[0]}, as_bytes[1]


def _read_codes(meta: dict[str, Any], data: bytes, n: int, count: int) -> np.ndarray:
    raw = _decompress(meta["codec"], data)
    if not meta["packed"]:
        return np.frombuffer(raw, dtype=_index_dtype(count))[:n].astype(np.int64)
    bits = meta["bits"]
    flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: n * bits]
    return (flat.reshape(n, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


# ---------------------------------------------------------------- encodings


def _candidates(values: np.ndarray, rows: np.ndarray | None
                ) -> list[tuple[str, dict[str, Any], list[bytes]]]:
    """Lossless encodings of a flat float array: (kind, meta, streams).

    `rows` gives each value's row (output channel) for the one-table-per-row codebook.
    """
    out = []
    codec, data = _compress(values.tobytes())
    out.append(("raw", {"codecs": [codec]}, [data]))
    table, codes = np.unique(values, return_inverse=True)
    if 1 < len(table) <= _MAX_TABLE:
        t_codec, t_data = _compress(table.tobytes())
        meta, stream = _codes_stream(codes.ravel(), len(table))
        out.append(("codebook", {"codecs": [t_codec], "codes": meta, "table": len(table)},
                    [t_data, stream]))
    if rows is not None and len(table) > 1 and rows[-1] > 0:
        out.extend(_row_codebook(values, rows))
    return out


def _row_codebook(values: np.ndarray, rows: np.ndarray
                  ) -> list[tuple[str, dict[str, Any], list[bytes]]]:
    """One table per row, padded to the longest row's table; codes index within the row."""
    count = int(rows[-1]) + 1
    starts = np.searchsorted(rows, np.arange(count + 1))
    tables, codes = [], np.empty(len(values), dtype=np.int64)
    for r in range(count):
        table, local = np.unique(values[starts[r]:starts[r + 1]], return_inverse=True)
        tables.append(table)
        codes[starts[r]:starts[r + 1]] = local.ravel()
    width = max(1, max(len(t) for t in tables))
    if width > 256:
        return []
    padded = np.stack([np.pad(t, (0, width - len(t)), mode="edge") if len(t) else
                       np.zeros(width, dtype=values.dtype) for t in tables])
    t_codec, t_data = _compress(padded.tobytes())
    meta, stream = _codes_stream(codes, width)
    return [("row_codebook", {"codecs": [t_codec], "codes": meta, "table": width,
                              "rows": count}, [t_data, stream])]


def _row_ids(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray | None:
    """Row (dim 0) of each stored value, in storage order; None for 0-/1-D tensors."""
    if len(shape) < 2 or shape[0] < 2:
        return None
    per_row = math.prod(shape[1:])
    if mask is None:
        return np.repeat(np.arange(shape[0]), per_row)
    return np.flatnonzero(mask) // per_row


def _encode(array: np.ndarray) -> tuple[str, dict[str, Any], list[bytes]]:
    """The smallest lossless encoding of one tensor."""
    flat = array.ravel()
    if flat.dtype.kind not in "fiu" or flat.size < 2:  # bool, complex, scalars: as they are
        codec, data = _compress(flat.tobytes())
        return "raw", {"codecs": [codec]}, [data]
    options = _candidates(flat, _row_ids(array.shape, None))
    mask = flat != 0
    if 0 < mask.sum() < 0.5 * flat.size:  # sparse enough that a bitmap may pay
        m_codec, m_data = _compress(np.packbits(mask, bitorder="little").tobytes())
        for kind, meta, streams in _candidates(flat[mask], _row_ids(array.shape, mask)):
            options.append((f"sparse_{kind}", {**meta, "mask_codec": m_codec},
                            [m_data, *streams]))
    return min(options, key=lambda o: sum(len(s) for s in o[2]))


def _decode(record: dict[str, Any], streams: list[bytes]) -> np.ndarray:
    dtype, shape = np.dtype(record["dtype"]), tuple(record["shape"])
    n, kind, meta = math.prod(shape), record["encoding"], record["meta"]
    mask = None
    if kind.startswith("sparse_"):
        bits = np.unpackbits(np.frombuffer(_decompress(meta["mask_codec"], streams[0]),
                                           dtype=np.uint8), bitorder="little")
        mask, streams, kind = bits[:n].astype(bool), streams[1:], kind[len("sparse_"):]
    count = int(mask.sum()) if mask is not None else n
    if kind == "raw":
        values = np.frombuffer(_decompress(meta["codecs"][0], streams[0]), dtype=dtype)[:count]
    else:
        table = np.frombuffer(_decompress(meta["codecs"][0], streams[0]), dtype=dtype)
        codes = _read_codes(meta["codes"], streams[1], count, meta["table"])
        if kind == "row_codebook":
            codes = codes + _row_ids(shape, mask) * meta["table"]
        values = table[codes]
    if mask is None:
        return values.reshape(shape).copy()
    out = np.zeros(n, dtype=dtype)
    out[mask] = values
    return out.reshape(shape)


# ---------------------------------------------------------------- container


def _tensors(source: Any) -> tuple[dict[str, np.ndarray], bytes | None]:
    """The tensors to store, and for an ONNX source the graph without them."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"stored_size: {str(path)!r} is not a file.")
        import onnx

        source = onnx.load(str(path))
    if type(source).__name__ == "ModelProto":
        return _split_onnx(source)
    if isinstance(source, nn.Module):
        source = source.state_dict()
    if not isinstance(source, dict):
        raise ConfigTypeError("stored_size needs a torch.nn.Module, a state dict, an .onnx path "
                              f"or an onnx.ModelProto; got {type(source).__name__}.")
    out = {}
    for name, tensor in source.items():
        if isinstance(tensor, torch.Tensor) and not name.endswith("num_batches_tracked"):
            t = tensor.detach().cpu()
            out[name] = (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()
    return out, None


def _split_onnx(proto: Any) -> tuple[dict[str, np.ndarray], bytes]:
    """Initializers and Constant-node values as arrays, and the graph without them; exotic
    tensors (external data, types numpy cannot hold) stay in the graph."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph, tensors, keep = proto.graph, {}, []
    for init in graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL and _numpy_type(init.data_type):
            tensors[init.name] = numpy_helper.to_array(init)
        else:
            keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = []
    for node in graph.node:  # weights folded into Constant nodes count too
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and _numpy_type(value.data_type):
            tensors[node.output[0]] = numpy_helper.to_array(value)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return tensors, proto.SerializeToString()


def _numpy_type(onnx_type: int) -> bool:
    import onnx

    return onnx_type not in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING,
                             onnx.TensorProto.BFLOAT16) and onnx_type < onnx.TensorProto.FLOAT8E4M3FN


def _restore_onnx(graph: bytes, state: dict[str, np.ndarray]) -> Any:
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(graph)
    proto.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in state.items())
    return proto


def encode(source: Any, *, entropy_coding: bool = True) -> tuple[bytes, StorageReport]:
    """The container bytes of `source` (module, state dict or .onnx path) and its report.

    `entropy_coding=False` stores every stream plain (bit-packed indices, bitmaps, raw
    values): the size before the entropy-coding stage of Deep Compression.
    """
    token = _ENTROPY.set(bool(entropy_coding))
    try:
        return _encode_all(source)
    finally:
        _ENTROPY.reset(token)


def _encode_all(source: Any) -> tuple[bytes, StorageReport]:
    records, payload, header = [], [], []
    tensors, graph = _tensors(source)
    for name, array in tensors.items():
        kind, meta, streams = _encode(np.ascontiguousarray(array))
        header.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                       "encoding": kind, "meta": meta, "lengths": [len(s) for s in streams]})
        payload.extend(streams)
        flat = array.ravel()
        sparse = kind.startswith("sparse_")
        distinct = meta.get("table", 0)
        records.append(TensorRecord(
            name=name, shape=list(array.shape), dtype=str(array.dtype), encoding=kind,
            numel=int(flat.size), nonzeros=int(np.count_nonzero(flat)),
            distinct=int(distinct) if not sparse or distinct else 0,
            index_bits=int(meta["codes"]["bits"]) if "codes" in meta else 0,
            dense_bytes=int(array.nbytes), stored_bytes=sum(len(s) for s in streams)))
    graph_codec, graph_stream = _compress(graph) if graph is not None else ("", b"")
    contents = {"tensors": header, "graph": [graph_codec, len(graph_stream)] if graph else None}
    head = lzma.compress(json.dumps(contents, separators=(",", ":")).encode(),
                         format=lzma.FORMAT_RAW, filters=_filters(_HEADER_CODEC))
    blob = MAGIC + struct.pack("<I", len(head)) + head + graph_stream + b"".join(payload)
    report = StorageReport(tensors=records,
                           header_bytes=len(head) + len(MAGIC) + 4 + len(graph_stream),
                           total_bytes=len(blob), dense_bytes=sum(r.dense_bytes for r in records))
    return blob, report


def stored_size(source: Any, *, entropy_coding: bool = True) -> StorageReport:
    """How many bytes the weights of `source` take in the compressed container."""
    return encode(source, entropy_coding=entropy_coding)[1]


def save_compressed(source: Any, path: str | os.PathLike[str], *,
                    entropy_coding: bool = True) -> StorageReport:
    """Write the container to `path` (atomically); its file size is `report.total_bytes`."""
    from edgeopt.atomic import write_bytes

    blob, report = encode(source, entropy_coding=entropy_coding)
    write_bytes(Path(path), blob)
    return report


def load_compressed(path: str | os.PathLike[str]) -> Any:
    """The exact tensors a container holds, as a state dict (load it with load_state_dict), or
    for a container made from ONNX the runnable onnx.ModelProto."""
    blob = Path(path).read_bytes()
    if blob[:4] != MAGIC:
        raise DataError(f"{str(path)!r} is not an edgeopt compressed-weights file.")
    (size,) = struct.unpack("<I", blob[4:8])
    contents = json.loads(_decompress(_HEADER_CODEC, blob[8:8 + size]))
    offset, graph = 8 + size, None
    if contents["graph"]:
        codec, length = contents["graph"]
        graph = _decompress(codec, blob[offset:offset + length])
        offset += length
    state = {}
    for record in contents["tensors"]:
        streams = []
        for length in record["lengths"]:
            streams.append(blob[offset:offset + length])
            offset += length
        state[record["name"]] = _decode(record, streams)
    if graph is not None:
        return _restore_onnx(graph, state)
    return {name: torch.from_numpy(value) for name, value in state.items()}
