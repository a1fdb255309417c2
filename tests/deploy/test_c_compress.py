"""Sparse and clustered weights as real flash bytes: lossless forms, chosen per layer, bit-exact in C."""

import functools
import shutil

import numpy as np
import pytest
import torch
from deploy_models import SHAPES, inputs

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.c import build_c, run_host
from edgeopt.deploy.c.compress import choose, decode, encode, pack_bits
from edgeopt.deploy.lower import lower_onnx

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                               reason="the host self-test needs gcc and make (apt-get install gcc make)")


def test_pack_bits_is_lsb_first_with_a_pad_byte():
    assert pack_bits(np.array([1, 2, 3, 0, 5]), 3).tolist() == [0b11010001, 0b1010000, 0]


@pytest.mark.parametrize("case", ["sparse", "clustered", "sparse+clustered", "narrow"])
def test_encode_round_trips_and_picks_the_smallest_form(case):
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(12, 90)).astype(np.int8)
    if case == "clustered":  # 16 values per row, a different codebook in every row
        w = np.stack([rng.choice(rng.integers(-127, 128, 16), 90) for _ in range(12)]).astype(np.int8)
    if case == "sparse+clustered":  # 16 values in the whole layer
        w = rng.choice(rng.integers(-127, 128, 16), size=(12, 90)).astype(np.int8)
    if "sparse" in case:
        w[rng.random(w.shape) < 0.8] = 0
    if case == "narrow":
        w = rng.integers(-16, 16, size=(12, 90)).astype(np.int8)  # 5-bit values
    form = encode(w)
    assert form.form == case
    np.testing.assert_array_equal(decode(form, *w.shape), w)
    assert form.nbytes < w.size
    if case == "sparse+clustered":  # bitmap + the nonzeros' indices + one codebook
        assert form.bitmap.nbytes == -(-w.size // 8) and form.codebook.shape[0] == 1 and form.codebook_stride == 0
        assert form.nbytes == form.bitmap.nbytes + -(-np.count_nonzero(w) * 4 // 8) + 1 + 16


def test_dense_weights_stay_dense():
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, size=(4, 5, 3, 3)).astype(np.int8)
    graph = _graph_with(w)
    assert choose(graph) == {}


def _graph_with(w):
    from edgeopt.deploy.ir import Graph, Op, QParams, Tensor

    q = QParams.of(0.1, 0)
    tensors = {"x": Tensor("x", (1, 4, 4, 3), "int8", q), "w": Tensor("w", w.shape, "int8", q, w),
               "b": Tensor("b", (w.shape[0],), "int32", q, np.zeros(w.shape[0], np.int32)),
               "y": Tensor("y", (1, 4, 4, w.shape[0]), "int8", q)}
    op = Op("conv2d", ["x", "w", "b"], ["y"], {"kernel": (3, 3), "stride": (1, 1), "dilation": (1, 1),
                                                "padding": (1, 1, 1, 1), "activation": "none"})
    return Graph(tensors, [op], ["x"], ["y"])


@functools.cache
def _compressed_model(technique: str):
    """lenet5 (conv + fully connected), 80 % of its weights pruned or 16 clusters per layer, then int8."""
    torch.manual_seed(0)
    net = eo.zoo.create("lenet5", SHAPES["lenet5"], 10).eval()
    config = (eo.PruneConfig(sparsity=0.8, structure="unstructured") if technique == "pruned"
              else eo.ClusterConfig(clusters=16))
    calib = inputs("lenet5", 16, seed=1)
    net = eo.apply(net, config, data=[(calib, torch.zeros(16, dtype=torch.long))])
    q = eo.apply(net, eo.QuantConfig(), data=[calib])
    import tempfile
    from pathlib import Path

    return eo.export_onnx(q, Path(tempfile.mkdtemp()) / f"lenet5-{technique}.onnx", calib[:1])


@needs_gcc
@pytest.mark.parametrize("technique", ["pruned", "clustered"])
def test_compressed_weights_are_bit_exact_and_smaller_in_flash(technique, tmp_path):
    graph = lower_onnx(_compressed_model(technique), calibration=inputs("lenet5", 16, seed=1))
    x = reference.quantize_input(graph, inputs("lenet5", 4, seed=4).numpy())
    info = build_c(graph, tmp_path / "c", test_inputs=x)
    dense = build_c(graph, tmp_path / "dense", test_inputs=x, compress_weights=False)
    assert run_host(info.out_dir).strip() == "edgeopt selftest: 4/4 bit-exact"
    forms = {layer["kind"]: layer["weight_form"] for layer in info.layers if "weight_form" in layer}
    want = "sparse" if technique == "pruned" else "clustered"
    assert forms["conv2d"].startswith(want) and forms["fully_connected"].startswith(want), forms
    assert all(layer["weight_form"] in ("dense", "int4") for layer in dense.layers if "weight_form" in layer)
    assert info.weight_bytes < 0.6 * dense.weight_bytes and info.flash_bytes < dense.flash_bytes
