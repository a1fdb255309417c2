"""Stored size: exact round trips, and sizes that shrink with sharing and sparsity."""

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import edgeopt as eo
from edgeopt.errors import ConfigTypeError, DataError
from edgeopt.storage import load_compressed, save_compressed, stored_size


def _state(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    if kind in ("sparse", "sparse_shared", "sparse_rows"):
        w[w.abs() < 1.6] = 0.0  # about 90 % zeros
    if kind in ("shared", "sparse_shared"):
        table = torch.linspace(-2, 2, 16)
        w = torch.where(w == 0, w, table[(w.clamp(-2, 2) + 2).div(4 / 15).round().long()])
    if kind in ("rows", "sparse_rows"):  # 8 values per row, different in every row
        tables = torch.randn(64, 8, generator=g)
        picked = tables.gather(1, torch.randint(0, 8, (64, 128), generator=g))
        w = torch.where(w == 0, w, picked) if kind == "sparse_rows" else picked
    return {"layer.weight": w, "layer.bias": torch.randn(64, generator=g),
            "bn.num_batches_tracked": torch.tensor(3), "steps": torch.arange(5)}


@pytest.mark.parametrize("kind", ["dense", "sparse", "shared", "sparse_shared", "rows",
                                  "sparse_rows"])
def test_round_trip_is_exact_and_size_is_the_file(kind, tmp_path):
    state = _state(kind)
    report = save_compressed(state, tmp_path / "w.eoz")
    assert os.path.getsize(tmp_path / "w.eoz") == report.total_bytes
    loaded = load_compressed(tmp_path / "w.eoz")
    assert set(loaded) == {"layer.weight", "layer.bias", "steps"}  # step counters not stored
    for name, tensor in loaded.items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name])


def test_sizes_follow_sharing_and_sparsity():
    sizes = {k: stored_size(_state(k)).tensors[0] for k in ("dense", "sparse", "shared",
                                                             "sparse_shared", "rows")}
    assert sizes["dense"].encoding == "raw"
    assert sizes["shared"].encoding == "codebook" and sizes["shared"].index_bits == 4
    assert sizes["rows"].encoding == "row_codebook" and sizes["rows"].index_bits == 3
    assert sizes["sparse"].encoding == "sparse_raw"
    assert sizes["sparse_shared"].encoding == "sparse_codebook"
    dense = sizes["dense"].stored_bytes
    assert dense >= 0.8 * 64 * 128 * 4  # LZMA only squeezes the float exponents a little
    assert sizes["shared"].stored_bytes < dense / 6  # 4-bit indices vs 32-bit floats
    assert sizes["rows"].stored_bytes < dense / 5  # 3-bit indices + 64 tables of 8 floats
    assert sizes["sparse"].stored_bytes < dense / 3
    assert sizes["sparse_shared"].stored_bytes < sizes["sparse"].stored_bytes / 3
    report = stored_size(_state("sparse_shared"))
    assert report.ratio == report.dense_bytes / report.total_bytes > 10
    assert report.to_dict()["ratio"] == report.ratio


def test_modules_and_onnx_files(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4))
    report = stored_size(model)
    assert [t.name for t in report.tensors] == ["0.weight", "0.bias"]
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(model[0].weight.detach().numpy(), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 8])],
                              [weight])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert [t.name for t in stored_size(path).tensors] == ["w"]


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigTypeError, match="stored_size needs a torch.nn.Module"):
        stored_size(42)
    (tmp_path / "junk").write_bytes(b"nope")
    with pytest.raises(DataError, match="not an edgeopt compressed-weights file"):
        load_compressed(tmp_path / "junk")


def test_without_entropy_coding_streams_are_bit_packed(tmp_path):
    state = _state("sparse_shared")
    plain = save_compressed(state, tmp_path / "plain.eoz", entropy_coding=False)
    coded = stored_size(state)
    weight = plain.tensors[0]
    assert weight.encoding == "sparse_codebook"
    bitmap, indices = (64 * 128 + 7) // 8, (weight.nonzeros * weight.index_bits + 7) // 8
    assert weight.stored_bytes == bitmap + indices + weight.distinct * 4
    assert coded.total_bytes < plain.total_bytes
    loaded = load_compressed(tmp_path / "plain.eoz")
    assert torch.equal(loaded["layer.weight"], state["layer.weight"])


def test_size_follows_unstructured_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    sizes = [stored_size(eo.apply(model, eo.PruneConfig(sparsity=s)) if s else model).total_bytes
             for s in (0.0, 0.5, 0.9)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 0.3 * sizes[0]


def test_onnx_container_restores_a_runnable_model_and_counts_the_graph(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.9))
    x = torch.randn(3, 1, 8, 8)
    path = eo.export_onnx(pruned, tmp_path / "m.onnx", x)
    report = save_compressed(path, tmp_path / "m.eoz")
    assert report.total_bytes == os.path.getsize(tmp_path / "m.eoz")
    assert report.total_bytes < 0.4 * path.stat().st_size
    assert report.header_bytes > 100  # the graph travels with the weights
    restored = load_compressed(tmp_path / "m.eoz")
    session = ort.InferenceSession(restored.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(out, pruned(x).detach().numpy(), atol=1e-5)


def test_a_run_reports_one_stored_size_for_a_pruned_stage(tmp_path):
    """Pruning's statistics and the run's `stored` column come from the same container."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pruned, stats = eo.apply_with_stats(model, eo.PruneConfig(sparsity=0.8))
    assert stats["prune"].sparse_bytes_after == stored_size(pruned).total_bytes
