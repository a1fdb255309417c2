"""Clustering end to end: shared values per layer / channel, zeros kept, fine-tuning, errors."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import edgeopt as eo
from edgeopt.clustering import ClusteredLayer
from edgeopt.errors import ConfigError, DataError, ModelError


def _net(sparsity: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 4))
    if sparsity:
        with torch.no_grad():
            for layer in (model[0], model[3], model[5]):
                w = layer.weight
                w[w.abs() < w.abs().flatten().quantile(sparsity)] = 0.0
    return model.eval()


def _data(n: int = 128) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return TensorDataset(x, (x.flatten(1)[:, :4] * 3).argmax(1))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [model[i].weight.detach() for i in (0, 3, 5)]


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_each_layer_shares_at_most_k_values_and_zeros_stay(init, tmp_path):
    model = _net(sparsity=0.5)
    before = [w.clone() for w in _weights(model)]
    out, out_stats = eo.apply_with_stats(model, eo.ClusterConfig(clusters=4, init=init))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))  # input untouched
    for original, clustered in zip(before, _weights(out)):
        assert torch.equal(original == 0, clustered == 0)
        assert torch.unique(clustered[clustered != 0]).numel() <= 4
    assert torch.equal(out[3].bias, model[3].bias)  # biases are not clustered
    assert not any(isinstance(m, ClusteredLayer) for m in out.modules())
    stats = out_stats["cluster"]
    assert [entry["name"] for entry in stats.layers] == ["0", "3", "5"]
    assert stats.layers[1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert stats.layers[1]["index_bits"] == 3  # 4 clusters + the zero code
    assert stats.stored_bytes < stats.stored_bytes_before < stats.dense_bytes
    x = torch.randn(3, 1, 6, 6)
    path = eo.export_onnx(out, tmp_path / "c.onnx", x[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, out(x).detach().numpy(), atol=1e-4)


def test_per_channel_codebooks():
    out, out_stats = eo.apply_with_stats(
        _net(), eo.ClusterConfig(clusters=3, granularity="per_channel"))
    for weight in _weights(out):
        for row in weight.reshape(weight.shape[0], -1):
            assert torch.unique(row).numel() <= 3
    layer = out_stats["cluster"].layers[1]
    assert layer["codebooks"] == 32 and layer["max_distinct_per_codebook"] <= 3


def test_cluster_preserving_finetuning_moves_centroids_only():
    model = _net(sparsity=0.6)
    plain = eo.apply(model, eo.ClusterConfig(clusters=8))
    tuned, tuned_stats = eo.apply_with_stats(
        model, eo.ClusterConfig(clusters=8, finetune_epochs=2, lr=1e-2), data=_data())
    stats = tuned_stats["cluster"]
    assert len(stats.finetune_loss) == 2
    for a, b, original in zip(_weights(plain), _weights(tuned), _weights(model)):
        assert not torch.equal(a, b)  # the centroids were trained
        assert torch.equal(b == 0, original == 0)  # pruned weights stay pruned
        assert torch.unique(b[b != 0]).numel() <= 8
        # same assignment: weights that shared a value still share one
        _, groups_a = torch.unique(a, return_inverse=True)
        _, groups_b = torch.unique(b, return_inverse=True)
        pairs = torch.unique(torch.stack([groups_a.flatten(), groups_b.flatten()]), dim=1)
        assert pairs.shape[1] == torch.unique(groups_a).numel()


def test_layer_patterns_and_statistics_of_its_own():
    model = _net()
    out, out_stats = eo.apply_with_stats(model, eo.ClusterConfig(clusters=4, exclude=("0",)))
    assert list(out_stats) == ["cluster"]
    assert torch.equal(out[0].weight, model[0].weight)
    assert [e["name"] for e in out_stats["cluster"].layers] == ["3", "5"]


@pytest.mark.parametrize("clusters,match", [
    (1, r"ClusterConfig.clusters must be an int in \[2, 256\]; got 1."),
    (0, r"ClusterConfig.clusters must be an int in \[2, 256\]; got 0."),
    (300, r"ClusterConfig.clusters must be an int in \[2, 256\]; got 300."),
])
def test_bad_cluster_counts(clusters, match):
    with pytest.raises(ConfigError, match=match):
        eo.ClusterConfig(clusters=clusters)


def test_more_clusters_than_distinct_weights_is_refused():
    model = _net()
    with torch.no_grad():
        model[5].weight.copy_(torch.tensor([0.5, -0.5, 0.25, 0.0]).repeat(4, 8))
    with pytest.raises(ConfigError, match=r"clusters=8 is more than the 3 distinct nonzero "
                                          r"weights of layer '5'; use clusters <= 3"):
        eo.apply(model, eo.ClusterConfig(clusters=8))
    out = eo.apply(model, eo.ClusterConfig(clusters=8, exclude=("5",)))
    assert torch.equal(out[5].weight, model[5].weight)


def test_other_errors():
    with pytest.raises(DataError, match="finetune_epochs > 0 needs training data"):
        eo.apply(_net(), eo.ClusterConfig(finetune_epochs=1))
    with pytest.raises(ModelError, match="no layer to cluster"):
        eo.apply(nn.Sequential(nn.ReLU()), eo.ClusterConfig())
    with pytest.raises(ConfigError, match="init must be one of 'linear', 'density', 'kmeans"):
        eo.ClusterConfig(init="random")


def test_config_round_trip():
    config = eo.ClusterConfig(clusters=32, init="kmeans++", granularity="per_channel")
    assert type(config).from_dict(config.to_dict()) == config and config.kind == "cluster"
