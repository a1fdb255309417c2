"""The x86 VNNI conv / depthwise kernels (edgeopt_x86.h) on tiny random layers chosen for their edge cases:
channel counts that are not multiples of 16 or 64, windows whose runs are not whole words, stride 2,
asymmetric padding, dilation, in-place layers, tiles narrower than the widest, power-of-two scales. Each
chain is built with both the VNNI kernels and the portable C and must equal the integer reference bit for
bit."""

import re
import subprocess

import numpy as np
import pytest
from test_simd import needs_gcc, needs_vnni

from edgeopt.deploy import reference
from edgeopt.deploy.c import build_c
from edgeopt.deploy.c.simd import (
    conv_segment,
    vnni_depthwise_bias,
    vnni_depthwise_weights,
    vnni_weights,
)
from edgeopt.deploy.ir import Graph, Op, QParams, Tensor

# (kind, out_c, kernel, stride, dilation, padding (top, left, bottom, right))
CHAIN = [
    ("conv2d", 20, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # 3 input channels: a 9-byte kernel row
    ("conv2d", 33, (3, 3), (2, 2), (1, 1), (0, 0, 1, 1)),  # stride 2, padding below and right only
    ("depthwise_conv2d", 33, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # 33 channels of a 64-channel pass
    ("conv2d", 17, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),  # pointwise, in place (17 <= 33)
    ("conv2d", 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # k x k in place (16 <= 17)
    ("depthwise_conv2d", 16, (5, 5), (2, 2), (1, 1), (2, 2, 2, 2)),  # 25 taps (not whole quads), stride 2
    ("conv2d", 70, (1, 3), (1, 1), (1, 2), (0, 2, 0, 2)),  # dilated along the row: one run per tap
    ("depthwise_conv2d", 70, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),  # dilated, two 64-channel passes
    ("conv2d", 40, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0)),  # pointwise stride 2
]


def _scale(rng, pow2: bool, n: int | None = None) -> np.ndarray:
    s = rng.uniform(0.01, 0.05, size=n) if n else rng.uniform(0.01, 0.05)
    return 2.0 ** np.round(np.log2(s)) if pow2 else s


def _chain(pow2: bool, seed: int = 0, shape=(1, 11, 13, 3)) -> Graph:
    """CHAIN as an IR graph with random int8 weights, per-channel weight scales, zero points and biases;
    each output scale puts the layer's outputs (on a random input) some 40 steps apart."""
    rng = np.random.default_rng(seed)
    tensors = {"x": Tensor("x", shape, "int8", QParams.of(_scale(rng, pow2), int(rng.integers(-20, 20))))}
    ops, x = [], "x"
    sample = rng.integers(-128, 128, size=shape).astype(np.int8)
    for i, (kind, out_c, kernel, stride, dilation, pad) in enumerate(CHAIN):
        _, h, w, c = tensors[x].shape
        oh, ow = ((size + lo + hi - d * (k - 1) - 1) // s + 1
                  for size, lo, hi, d, k, s in zip((h, w), pad[:2], pad[2:], dilation, kernel, stride))
        depthwise = kind == "depthwise_conv2d"
        wshape = (1, *kernel, out_c) if depthwise else (out_c, *kernel, c)
        ws = _scale(rng, pow2, out_c)
        fan_in = kernel[0] * kernel[1] * (1 if depthwise else c)
        spread = np.std(reference.run(Graph(tensors, list(ops), ["x"], [x]), sample)[0].astype(np.float64))
        sq = float(tensors[x].qparams.scale) * float(np.mean(ws)) * max(spread, 1.0) * 73 * np.sqrt(fan_in) / 40
        out_q = QParams.of(2.0 ** np.round(np.log2(sq)) if pow2 else sq, int(rng.integers(-10, 10)))
        tensors[f"w{i}"] = Tensor(f"w{i}", wshape, "int8", QParams.of(ws, np.zeros(out_c, np.int32), 3 if depthwise else 0),
                                  rng.integers(-127, 128, size=wshape).astype(np.int8))
        tensors[f"b{i}"] = Tensor(f"b{i}", (out_c,), "int32", QParams.of(1.0), rng.integers(-3000, 3000, out_c).astype(np.int32))
        tensors[f"y{i}"] = Tensor(f"y{i}", (1, oh, ow, out_c), "int8", out_q)
        attrs = {"kernel": kernel, "stride": stride, "dilation": dilation, "padding": pad,
                 "activation": "relu" if i % 2 else "none", **({"depth_multiplier": 1} if depthwise else {})}
        ops.append(Op(kind, [x, f"w{i}", f"b{i}"], [f"y{i}"], attrs, f"layer{i}"))
        x = f"y{i}"
    return Graph(tensors, ops, ["x"], [x])


@needs_gcc
@needs_vnni
@pytest.mark.parametrize("pow2", [False, True])
def test_vnni_kernels_edge_cases_are_bit_exact(pow2, tmp_path):
    graph = _chain(pow2)
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(4, graph.tensors["x"].size)).astype(np.int8)
    info = build_c(graph, tmp_path / "c", test_inputs=x, pow2=pow2)
    model_c = (info.out_dir / "model.c").read_text()
    in_place = re.findall(r"eo_conv2d\(&L(\d), (\(arena \+ \d+\)), \2", model_c)
    assert "eo_depthwise_conv2d_inplace(&L2" in model_c and [i for i, _ in in_place] == ["3", "4"]
    outputs = {reference.run(graph, row, pow2=pow2)[0].tobytes() for row in x}
    assert len(outputs) == len(x)  # the inputs are told apart: no saturated, constant chain
    for flags in ("-O3 -march=native -std=c99", "-O2 -std=c99 -DEDGEOPT_PORTABLE"):
        subprocess.run(["make", "-s", "-C", str(info.out_dir), "clean"], check=True)
        done = subprocess.run(["make", "-s", "-C", str(info.out_dir), "host", f"CFLAGS={flags} -Wall -Werror"],
                              capture_output=True, text=True)
        assert done.stdout.strip() == "edgeopt selftest: 4/4 bit-exact", (flags, done.stdout, done.stderr)


def test_conv_weights_pad_each_contiguous_run_to_whole_words():
    w = np.arange(2 * 3 * 3 * 3).reshape(2, 3, 3, 3).astype(np.int8)  # OHWI: a kernel row is 9 input bytes
    packed = vnni_weights(w, conv_segment(3, 1, 3))
    assert packed.shape == (1, 9, 16, 4)  # 3 kernel rows x 3 words, not ceil(27 / 4) = 7
    row1 = w[1, 1].reshape(-1)  # channel 1, kernel row 1: words 3..5
    assert packed[0, 3:6, 1].reshape(-1).tolist() == [*row1, 0, 0, 0]
    assert conv_segment(3, 2, 5) == 5  # dilated: one tap per run


def test_depthwise_weights_interleave_four_taps_per_channel_in_lane_order():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(1, 3, 3, 70)).astype(np.int8)
    packed = vnni_depthwise_weights(w)
    assert packed.shape == (2, 3, 64, 4)  # ceil(70 / 64) groups, ceil(9 / 4) quads of taps
    taps = w.reshape(9, 70)
    for g, q, pos, b in [(0, 0, 0, 0), (0, 1, 5, 2), (0, 2, 37, 0), (1, 0, 17, 3)]:
        r, k, j = pos // 16, (pos // 4) % 4, pos % 4  # vector r, 128-bit lane k, dword j
        assert packed[g, q, pos, b] == taps[4 * q + b, 64 * g + 16 * k + 4 * r + j]
    assert not packed[0, 2, :, 1:].any()  # taps 9..11 are padding
    bias = vnni_depthwise_bias(w, np.arange(70, dtype=np.int32), 3)
    want = np.arange(70) - 131 * taps.astype(np.int64).sum(axis=0)
    assert bias.shape == (128,) and bias[16 * 1 + 4 * 2 + 3] == want[16 * 2 + 4 * 1 + 3]
    assert bias[64 + 16 * 1 + 1] == want[64 + 4 * 1 + 1] and bias[64 + 4] == 0  # group 1; channel 80: padding
