"""Weight layouts the hand-written SIMD kernels read, made at codegen (pure functions).

x86 AVX-512 VNNI (runtime/edgeopt_x86.h): VPDPBUSD multiplies unsigned input bytes by signed weights,
four deep, into 16 int32 lanes. The kernel feeds it u = x + 128, so each output channel's bias carries
-(128 + in_zp) * sum(w); the weights go in blocks of 16 output channels, four input values deep.
"""

from __future__ import annotations

import numpy as np

LANES, DEPTH = 16, 4


def vnni_weights(weights: np.ndarray) -> np.ndarray:
    """[out_c][k] int8 -> [ceil(out_c/16)][ceil(k/4)][16][4], zero-padded (padding meets zero weights)."""
    w = np.asarray(weights, np.int8).reshape(weights.shape[0], -1)
    out_c, k = w.shape
    blocks, words = -(-out_c // LANES), -(-k // DEPTH)
    padded = np.zeros((blocks * LANES, words * DEPTH), np.int8)
    padded[:out_c, :k] = w
    return padded.reshape(blocks, LANES, words, DEPTH).transpose(0, 2, 1, 3).copy()


def vnni_bias(weights: np.ndarray, bias: np.ndarray, in_zp: int) -> np.ndarray:
    """bias - (128 + in_zp) * sum(w) per output channel, wrapped to int32 like the kernel's sums."""
    w = np.asarray(weights, np.int64).reshape(weights.shape[0], -1)
    corrected = np.asarray(bias, np.int64).reshape(-1) - (128 + int(in_zp)) * w.sum(axis=1)
    return corrected.astype(np.uint32).astype(np.int32) if corrected.size else corrected.astype(np.int32)

