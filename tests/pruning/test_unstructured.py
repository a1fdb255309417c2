"""Unstructured and N:M pruning: exact sparsity, zeros baked in, bad input named."""

import pytest
import torch
from pruning_models import ConcatNet, DepthwiseNet, ResidualNet, batches, make, mlp
from torch import nn

import edgeopt as eo
from edgeopt.errors import ConfigError, DataError
from edgeopt.pruning.common import prunable_weights

X = torch.randn(4, 1, 8, 8)


def _sparsity(t):
    return float((t == 0).float().mean())


def test_layer_scope_prunes_every_layer_exactly():
    pruned = eo.apply(mlp(), eo.PruneConfig(sparsity=0.8))
    for name in ("1", "3", "5"):
        assert _sparsity(pruned.get_submodule(name).weight) == pytest.approx(0.8, abs=0.01)
    # the biggest weights survive
    w = mlp()[1].weight.abs()
    kept = pruned[1].weight != 0
    assert w[kept].min() >= w[~kept].max()


def test_no_masks_or_parametrizations_are_left_behind():
    pruned = eo.apply(make(ResidualNet), eo.PruneConfig(sparsity=0.5))
    names = set(pruned.state_dict())
    assert names == set(make(ResidualNet).state_dict())
    assert not any("mask" in n or "orig" in n for n in names)
    assert all(not hasattr(m, "parametrizations") for m in pruned.modules())
    assert type(pruned) is ResidualNet


def test_global_scope_uses_one_threshold():
    model = mlp()
    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.6, scope="global"))
    weights = prunable_weights(pruned)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    kept = torch.cat([w[w != 0].abs() for w in weights.values()])
    original = prunable_weights(model)
    removed = torch.cat([original[n][(w == 0)].abs() for n, w in weights.items()])
    assert kept.min() >= removed.max() - 1e-7


def test_n_m_keeps_n_of_every_m_inputs():
    pruned = eo.apply(mlp(), eo.PruneConfig(structure="n:m", n=2, m=4, sparsity=0.5))
    for name in ("1", "3", "5"):
        groups = (pruned.get_submodule(name).weight != 0).reshape(-1, 4).sum(dim=1)
        assert bool((groups <= 2).all())


def test_n_m_skips_layers_too_narrow_and_names_bad_ones():
    pruned, pruned_stats = eo.apply_with_stats(
        make(DepthwiseNet), eo.PruneConfig(structure="n:m", sparsity=0.5))
    skipped = {s["name"] for s in pruned_stats["prune"].skipped_layers}
    assert skipped == {"pw1.weight", "dw.weight"}  # 1 input per output < m
    assert _sparsity(pruned.pw2.weight) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"PruneConfig.m=4 must divide .*'c' \(10 inputs\)"):
        eo.apply(ConcatNet(), eo.PruneConfig(structure="n:m", sparsity=0.5))
    with pytest.raises(ConfigError, match="PruneConfig.n must be"):
        eo.PruneConfig(structure="n:m", n=6, m=4)


@pytest.mark.parametrize("criterion", ["l1", "gradient", "taylor", "activation", "random",
                                       "movement", "sensitivity"])
def test_every_criterion_reaches_the_target(criterion):
    config = eo.PruneConfig(sparsity=0.75, criterion=criterion)
    pruned = eo.apply(mlp(), config, data=batches())
    weights = prunable_weights(pruned)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / total == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize("criterion", ["gradient", "taylor", "activation", "movement",
                                       "sensitivity"])
def test_data_criteria_without_data_are_refused(criterion):
    with pytest.raises(DataError, match=f"criterion={criterion!r}"):
        eo.apply(mlp(), eo.PruneConfig(criterion=criterion))


def test_gradient_criteria_need_labels():
    with pytest.raises(DataError, match="needs labeled data; data has no targets"):
        eo.apply(mlp(), eo.PruneConfig(criterion="taylor"), data=[X])
    with pytest.raises(DataError, match="needs labeled data"):
        eo.apply(mlp(), eo.PruneConfig(finetune_epochs=1), data=[X])


def test_structured_without_data_is_refused():
    with pytest.raises(DataError, match="structure='channel' traces the model"):
        eo.apply(mlp(), eo.PruneConfig(structure="channel"))


def test_nothing_prunable_is_a_model_error():
    with pytest.raises(ValueError, match="no prunable Linear / Conv"):
        eo.apply(nn.Sequential(nn.ReLU()), eo.PruneConfig())
    with pytest.raises(ValueError, match="no prunable"):
        eo.apply(mlp(), eo.PruneConfig(exclude=("*",)))


def test_stats_record_layers_and_compact_size():
    pruned, pruned_stats = eo.apply_with_stats(mlp(), eo.PruneConfig(sparsity=0.9), data=[X])
    stats = pruned_stats["prune"].to_dict()
    assert stats["weight_sparsity"] == pytest.approx(0.9, abs=0.01)
    rows = {r["name"]: r for r in stats["layers"]}
    assert rows["1"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert rows["1"]["macs_before"] == 64 * 32 and rows["1"]["params_after"] == 64 * 32 + 32
    assert stats["sparse_bytes_after"] < 0.35 * stats["sparse_bytes_before"]
    assert stats["dense_bytes_after"] == stats["dense_bytes_before"]
    assert stats["effective_macs_after"] < 0.2 * stats["macs_before"]
    assert len(stats["masks"]["1"]) == 32
