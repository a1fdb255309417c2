"""Weight layouts the hand-written SIMD kernels read, made at codegen (pure functions).

x86 AVX-512 VNNI (runtime/edgeopt_x86.h): VPDPBUSD multiplies unsigned input bytes by signed weights,
four deep, into 16 int32 lanes. The kernel feeds it u = x + 128, so each output channel's bias carries
-(128 + in_zp) * sum(w); the weights go in blocks of 16 output channels, four input values deep.
"""

from __future__ import annotations

import numpy as np

LANES, DEPTH, GROUP = 16, 4, 64  # int32 lanes, bytes per lane, depthwise channels per pass


def vnni_weights(weights: np.ndarray, segment: int | None = None) -> np.ndarray:
    """[out_c][k] int8 -> [ceil(out_c/16)][words][16][4], zero-padded (padding meets zero weights).

    segment: k splits into runs of this many values that lie contiguous in the input (a conv's kernel row
    when its dilation is 1, else one tap); each run is padded to whole words, so no word straddles two runs.
    """
    w = np.asarray(weights, np.int8).reshape(weights.shape[0], -1)
    out_c, k = w.shape
    segment = segment or max(k, 1)
    runs, per_run = k // segment, -(-segment // DEPTH) * DEPTH
    w = np.pad(w.reshape(out_c, runs, segment), ((0, 0), (0, 0), (0, per_run - segment))).reshape(out_c, -1)
    blocks, words = -(-out_c // LANES), w.shape[1] // DEPTH
    padded = np.zeros((blocks * LANES, words * DEPTH), np.int8)
    padded[:out_c] = w
    return padded.reshape(blocks, LANES, words, DEPTH).transpose(0, 2, 1, 3).copy()


def conv_segment(kernel_w: int, dilation_w: int, in_c: int) -> int:
    """The contiguous run of a conv's input window (OHWI weights): a kernel row, or one tap when dilated."""
    return kernel_w * in_c if dilation_w == 1 else in_c


def vnni_bias(weights: np.ndarray, bias: np.ndarray, in_zp: int) -> np.ndarray:
    """bias - (128 + in_zp) * sum(w) per output channel, wrapped to int32 like the kernel's sums."""
    w = np.asarray(weights, np.int64).reshape(weights.shape[0], -1)
    corrected = np.asarray(bias, np.int64).reshape(-1) - (128 + int(in_zp)) * w.sum(axis=1)
    return corrected.astype(np.uint32).astype(np.int32) if corrected.size else corrected.astype(np.int32)


def _depthwise_order(values: np.ndarray) -> np.ndarray:
    """[..., 64 channels] -> lane order of the depthwise kernel's accumulators: vector r, 128-bit lane k,
    dword j holds channel 16k + 4r + j (what VPUNPCK*BW / *WD make of four taps' bytes)."""
    return values.reshape(*values.shape[:-1], 4, 4, 4).swapaxes(-3, -2).reshape(values.shape)


def vnni_depthwise_weights(weights: np.ndarray) -> np.ndarray:
    """1HWC depthwise weights (multiplier 1) -> [ceil(c/64)][ceil(taps/4)][64 channels, kernel order][4 taps]."""
    w = np.asarray(weights, np.int8).reshape(-1, weights.shape[-1])  # [taps][c]
    taps, c = w.shape
    groups, quads = -(-c // GROUP), -(-taps // DEPTH)
    padded = np.zeros((quads * DEPTH, groups * GROUP), np.int8)
    padded[:taps, :c] = w
    by_group = padded.reshape(quads, DEPTH, groups, GROUP).transpose(2, 0, 3, 1)  # [g][quad][channel][tap]
    return _depthwise_order(by_group.swapaxes(-1, -2)).swapaxes(-1, -2).copy()


def vnni_depthwise_bias(weights: np.ndarray, bias: np.ndarray, in_zp: int) -> np.ndarray:
    """vnni_bias per channel (sum over the taps), padded to 64 channels a group, in the kernel's lane order."""
    w = np.asarray(weights, np.int64).reshape(-1, weights.shape[-1])
    corrected = vnni_bias(w.T, bias, in_zp)
    padded = np.zeros(-(-corrected.size // GROUP) * GROUP, np.int32)
    padded[:corrected.size] = corrected
    return _depthwise_order(padded.reshape(-1, GROUP)).reshape(-1)
