"""Weights in flash in the smallest form the kernels read: sparse and clustered layers as real bytes.

A layer's int8 weights ([rows = output channels][n]) are lossless in every form:
  dense       int8, one byte per weight (4-bit layers: two per byte, emit.pack_int4)
  narrow      every weight as a signed b-bit field (b < 8: the layer's values all fit b bits)
  clustered   b-bit indices into a codebook of <= 2^b int8 values, one per row or one for the layer
  sparse      a bitmap of nonzeros (one bit per weight), then the nonzeros as narrow or clustered fields
Fields are one LSB-first bit stream over all rows, then one pad byte.
`choose` keeps the smallest; edgeopt_kernels_compressed.c decodes a row at a time (sparse fully connected
layers skip the zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.deploy.ir import Graph

KINDS = ("conv2d", "fully_connected")  # depthwise weights are small and read tap by tap: dense
STRUCT_BYTES = 20  # sizeof(eo_compressed_t) on a 32-bit core: what a compressed form costs on top
CODE_BYTES = 1536  # the compressed kernels' code on a Cortex-M4 (-O2, about 1.4 KB): worth it above this


@dataclass(frozen=True)
class Encoded:
    form: str  # "narrow" | "clustered" | "sparse" | "sparse+clustered"
    bits: int  # bits per stored field
    values: np.ndarray  # uint8 bit stream of the fields (+ one pad byte)
    bitmap: np.ndarray | None  # uint8, bit r * n + i set where weight [r][i] is stored (nonzero)
    codebook: np.ndarray | None  # int8 [rows or 1][entries]
    nbytes: int  # flash of the weight data: stream, bitmap and codebook (not the descriptor)

    @property
    def codebook_stride(self) -> int:
        return 0 if self.codebook is None or len(self.codebook) == 1 else self.codebook.shape[1]


def pack_bits(fields: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned fields < 2^bits as one LSB-first bit stream, plus one zero pad byte."""
    flat = np.asarray(fields, np.uint8).reshape(-1)
    stream = ((flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(-1)
    return np.append(np.packbits(stream, bitorder="little"), np.uint8(0))


def signed_bits(values: np.ndarray) -> int:
    """The fewest bits of a two's complement field holding every value (at least 1)."""
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    return next(b for b in range(1, 9) if -(1 << (b - 1)) <= lo and hi < (1 << (b - 1)))


def _narrow(kept: np.ndarray) -> tuple[int, np.ndarray, None]:
    bits = signed_bits(kept)
    return bits, kept.astype(np.int64) & ((1 << bits) - 1), None


def _clustered(rows: list[np.ndarray], shared: bool) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Indices into one codebook per row (or one for the layer): None when that needs 8 bits anyway."""
    books = [np.unique(np.concatenate(rows))] if shared else [np.unique(r) for r in rows]
    entries = max(max(len(b) for b in books), 1)
    bits = max(1, int(np.ceil(np.log2(entries))))
    if bits >= 8:
        return None
    codebook = np.zeros((len(books), entries), np.int8)
    for i, book in enumerate(books):
        codebook[i, :len(book)] = book
    fields = [np.searchsorted(books[0 if shared else i], r) for i, r in enumerate(rows)]
    return bits, np.concatenate(fields) if fields else np.zeros(0, np.int64), codebook


def encode(weights: np.ndarray) -> Encoded:
    """The smallest of the narrow, clustered and sparse forms of int8 weights [rows][n] (the caller
    compares it with the dense form)."""
    w = np.asarray(weights, np.int8).reshape(len(weights), -1)
    best = None
    for sparse in (False, True):
        mask = w != 0 if sparse else np.ones(w.shape, bool)
        rows = [r[m] for r, m in zip(w, mask)]
        bitmap = np.packbits(mask.reshape(-1), bitorder="little") if sparse else None
        options = [_narrow(w[mask]), _clustered(rows, True), _clustered(rows, False)]
        for kind, option in zip(("narrow", "clustered", "clustered"), options):
            if option is None:
                continue
            bits, fields, codebook = option
            values = pack_bits(fields, bits)
            nbytes = values.nbytes + (bitmap.nbytes if sparse else 0) + (codebook.nbytes if codebook is not None
                                                                           else 0)
            form = ("sparse" if kind == "narrow" else "sparse+clustered") if sparse else kind
            if best is None or nbytes < best.nbytes:
                best = Encoded(form, bits, values, bitmap, codebook, nbytes)
    assert best is not None  # narrow always applies
    return best


def dense_bytes(graph: Graph, weight: str) -> int:
    w = graph.tensors[weight]
    return (w.size + 1) // 2 if w.dtype == "int4" else w.size


def choose(graph: Graph) -> dict[str, Encoded]:
    """Weight tensor -> its compressed form, for the conv / fully connected layers where one is smaller than
    the dense (or 4-bit packed) weights with its descriptor counted; none unless together they save more
    than the compressed kernels' code costs."""
    forms: dict[str, Encoded] = {}
    saved = 0
    for op in graph.ops:
        if op.kind not in KINDS or op.inputs[1] in forms:
            continue
        w = graph.tensors[op.inputs[1]]
        encoded = encode(w.data.reshape(w.shape[0], -1))
        gain = dense_bytes(graph, op.inputs[1]) - encoded.nbytes - STRUCT_BYTES
        if gain > 0:
            forms[op.inputs[1]], saved = encoded, saved + gain
    return forms if saved > CODE_BYTES else {}


def decode(encoded: Encoded, rows: int, n: int) -> np.ndarray:
    """The int8 weights back from a form, as the C reader does (tests check the round trip)."""
    bits = np.unpackbits(encoded.values[:-1], bitorder="little")
    count = bits.size // encoded.bits
    fields = (bits[:count * encoded.bits].reshape(count, encoded.bits).astype(np.int64)
              << np.arange(encoded.bits)).sum(axis=1)
    mask = (np.ones(rows * n, bool) if encoded.bitmap is None
            else np.unpackbits(encoded.bitmap, bitorder="little")[:rows * n].astype(bool))
    row_of = np.repeat(np.arange(rows), n)[mask]
    fields = fields[:len(row_of)]
    if encoded.codebook is None:
        kept = np.where(fields >= 1 << (encoded.bits - 1), fields - (1 << encoded.bits), fields)
    else:
        kept = encoded.codebook[row_of if len(encoded.codebook) > 1 else 0, fields]
    out = np.zeros(rows * n, np.int8)
    out[mask] = kept
    return out.reshape(rows, n)
