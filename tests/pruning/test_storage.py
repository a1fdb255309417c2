"""Compact sparse storage: exact round trips, sizes that shrink with sparsity."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pruning_models import mlp

import edgeopt as eo
from edgeopt.errors import ConfigTypeError
from edgeopt.export.onnx import export_onnx
from edgeopt.pruning.storage import (
    decode,
    encode,
    encode_tensor,
    load_sparse,
    save_sparse,
    sparse_size_bytes,
)


def test_tensor_encoding_round_trips_and_picks_the_smaller():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 9)).astype(np.float32)
    sparse = dense * (rng.random((8, 9)) < 0.1)
    assert encode_tensor(dense)[0] == "dense" and encode_tensor(sparse)[0] == "bitmap"
    tensors = {"a": dense, "b": sparse, "c": np.arange(5, dtype=np.int8), "d": np.float32(2.0)}
    out, graph = decode(encode(tensors))
    assert graph is None
    for name, value in tensors.items():
        assert out[name].dtype == np.asarray(value).dtype
        assert np.array_equal(out[name], value)


def test_size_follows_sparsity():
    sizes = []
    for sparsity in (0.0, 0.5, 0.9):
        pruned = eo.apply(mlp(), eo.PruneConfig(sparsity=sparsity)) if sparsity else mlp()
        sizes.append(sparse_size_bytes(pruned))
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 0.3 * sizes[0]


def test_onnx_archive_restores_a_runnable_model(tmp_path):
    pruned = eo.apply(mlp(), eo.PruneConfig(sparsity=0.9))
    x = torch.randn(3, 1, 8, 8)
    path = export_onnx(pruned, tmp_path / "m.onnx", x)
    archive = save_sparse(path, tmp_path / "m.eosparse")
    assert archive.stat().st_size < 0.4 * path.stat().st_size
    assert sparse_size_bytes(path) == archive.stat().st_size
    restored = load_sparse(archive)
    session = ort.InferenceSession(restored.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(out, pruned(x).detach().numpy(), atol=1e-5)


def test_state_dict_archive_round_trips(tmp_path):
    pruned = eo.apply(mlp(), eo.PruneConfig(sparsity=0.5))
    state = load_sparse(save_sparse(pruned, tmp_path / "m.eosparse"))
    assert all(torch.equal(state[k], v) for k, v in pruned.state_dict().items())


def test_wrong_input_type():
    with pytest.raises(ConfigTypeError, match="sparse storage needs"):
        sparse_size_bytes(42)
