"""End to end through eo.apply: schedules, fine-tuning, layers, lottery, quantization."""

import pytest
import torch
from pruning_models import BlockNet, ResidualNet, batches, data, make, mlp

import edgeopt as eo
from edgeopt.pruning import AdvancedPrune, prune
from edgeopt.pruning.common import prunable_weights
from edgeopt.pruning.layers import Bypass
from edgeopt.quantization.modules import QuantizedWeightLayer
from edgeopt.training import evaluate as accuracy

QUIET = AdvancedPrune(progress=False)
X = torch.randn(4, 1, 8, 8)


def _zero_fraction(model):
    weights = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in weights.values()) / sum(
        w.numel() for w in weights.values())


def _trained_mlp():
    model = mlp()
    eo.training.fit(model, data(160), epochs=8, lr=3e-3, progress=False)
    return model


def test_iterative_rounds_raise_sparsity_and_record_accuracy():
    config = eo.PruneConfig(sparsity=0.875, schedule="iterative", steps=3, finetune_epochs=1,
                            advanced=QUIET)
    pruned, pruned_stats = eo.apply_with_stats(mlp(), config, data=data())
    rounds = pruned_stats["prune"].rounds
    assert [round(r["sparsity"], 3) for r in rounds] == [0.5, 0.75, 0.875]
    assert all(r["accuracy"] is not None and r["epochs"] == 1 for r in rounds)
    assert _zero_fraction(pruned) == pytest.approx(0.875, abs=0.01)


def test_finetuning_recovers_and_keeps_zeros():
    model = _trained_mlp()
    val = data(64, seed=1)
    base = accuracy(model, val)
    cold = eo.apply(model, eo.PruneConfig(sparsity=0.9, scope="global"))
    warm = prune(model, eo.PruneConfig(sparsity=0.9, scope="global", finetune_epochs=4, lr=3e-3,
                                       advanced=QUIET), data(160), val_data=val).model
    assert _zero_fraction(warm) == pytest.approx(0.9, abs=0.01)
    assert accuracy(warm, val) >= accuracy(cold, val)
    assert accuracy(warm, val) >= base - 0.15


def test_early_stopping_stops_after_patience():
    config = eo.PruneConfig(sparsity=0.5, finetune_epochs=30, lr=1e-6,
                            advanced=AdvancedPrune(patience=2, progress=False))
    pruned, pruned_stats = eo.apply_with_stats(mlp(), config, data=data())
    assert pruned_stats["prune"].rounds[0]["epochs"] < 30


def test_polynomial_ramps_to_the_target():
    config = eo.PruneConfig(sparsity=0.8, schedule="polynomial", finetune_epochs=4,
                            advanced=AdvancedPrune(prune_every=2, progress=False))
    pruned, pruned_stats = eo.apply_with_stats(mlp(), config, data=data(192))
    sparsities = [r["sparsity"] for r in pruned_stats["prune"].rounds]
    assert sparsities == sorted(sparsities) and sparsities[0] < 0.8 and sparsities[-1] == 0.8
    assert _zero_fraction(pruned) == pytest.approx(0.8, abs=0.01)


def test_polynomial_channels_end_physically_smaller():
    config = eo.PruneConfig(sparsity=0.5, structure="channel", schedule="polynomial",
                            finetune_epochs=2, advanced=AdvancedPrune(prune_every=1,
                                                                       progress=False))
    pruned = eo.apply(make(ResidualNet), config, data=data())
    assert pruned.conv1.out_channels == 4 and pruned(X).shape == (4, 5)


def test_layer_pruning_bypasses_the_weakest_blocks():
    model = make(BlockNet)
    with torch.no_grad():
        model.blocks[2].bn.weight.mul_(0.01)
    pruned, pruned_stats = eo.apply_with_stats(
        model, eo.PruneConfig(sparsity=0.5, structure="layer", criterion="activation"), data=[X])
    removed = pruned_stats["prune"].blocks_removed
    assert len(removed) == 2 and "blocks.2" in removed
    assert sum(isinstance(m, Bypass) for m in pruned.blocks) == 2
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned(X).shape == (4, 5)


def test_layer_pruning_needs_residual_blocks():
    with pytest.raises(ValueError, match="structure='layer' needs residual blocks"):
        eo.apply(mlp(), eo.PruneConfig(structure="layer"), data=[X])


def test_lottery_ticket_rewinds_and_reports_each_round():
    config = eo.PruneConfig(sparsity=0.75, schedule="iterative", steps=2, finetune_epochs=2,
                            rewind="init", scope="global", lr=3e-3, advanced=QUIET)
    model = mlp()
    ticket, ticket_stats = eo.apply_with_stats(model, config, data=data(160))
    rounds = ticket_stats["prune"].rounds
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[0]["sparsity"] == 0
    assert _zero_fraction(ticket) == pytest.approx(0.75, abs=0.02)
    assert all(r["accuracy"] is not None and r["best_epoch"] is not None for r in rounds)


def test_regularization_then_pruning():
    for kind, structure in (("l1", "unstructured"), ("group_lasso", "channel")):
        config = eo.PruneConfig(sparsity=0.5, structure=structure, regularization=kind,
                                reg_epochs=1, reg_strength=1e-3, advanced=QUIET)
        pruned, pruned_stats = eo.apply_with_stats(make(ResidualNet), config, data=data())
        assert pruned_stats["prune"].regularization["epochs"] == 1


def test_pruned_then_quantized_keeps_the_zeros():
    pruned = eo.apply(make(ResidualNet), eo.PruneConfig(sparsity=0.7), data=[X])
    calib = [x for x, _ in batches()]
    quantized = eo.apply(pruned, eo.QuantConfig(), data=calib)
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, QuantizedWeightLayer)}
    assert layers
    for name, layer in layers.items():
        zeros = pruned.get_submodule(name).weight == 0
        assert bool((layer.weight_q[zeros] == 0).all()), name


def test_stats_are_returned_for_the_run_report():
    pruned, stats = eo.apply_with_stats(mlp(), eo.PruneConfig(sparsity=0.5), data=[X])
    record = stats["prune"].to_dict()
    assert record["structure"] == "unstructured" and record["layers"]
    assert not hasattr(pruned, "meta")


def test_iterative_channels_reach_the_one_shot_widths():
    config = eo.PruneConfig(sparsity=0.5, structure="channel", schedule="iterative", steps=3,
                            advanced=QUIET)
    pruned, pruned_stats = eo.apply_with_stats(make(ResidualNet), config, data=[X])
    assert pruned.conv1.out_channels == 4 and pruned.down[0].out_channels == 8
    assert len(pruned_stats["prune"].rounds) == 3
