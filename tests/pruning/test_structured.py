"""Channel pruning rebuilds smaller layers; removal is exact for zeroed channels."""

import copy

import numpy as np
import pytest
import torch
from pruning_models import (
    ConcatNet,
    DepthwiseNet,
    ResidualNet,
    TinyTransformer,
    batches,
    make,
    mlp,
)

import edgeopt as eo
from edgeopt.export.onnx import export_onnx
from edgeopt.pruning import AdvancedPrune
from edgeopt.pruning.graph import build_graph
from edgeopt.pruning.structured import channel_scores, select_channels
from edgeopt.pruning.surgery import channel_masks, shrink, zero_channels

X = torch.randn(4, 1, 8, 8)
MODELS = {"residual": lambda: make(ResidualNet), "concat": lambda: make(ConcatNet),
          "depthwise": lambda: make(DepthwiseNet), "mlp": mlp,
          "transformer": lambda: make(TinyTransformer)}


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_zeroed_channels_then_shrink_compute_the_same(name):
    model = MODELS[name]()
    graph = build_graph(model, X)
    scores = channel_scores(model, graph, eo.PruneConfig(structure="channel"), None)
    removed = select_channels(graph, scores, eo.PruneConfig(structure="channel"), 0.5)
    assert removed
    zero_channels(model, channel_masks(graph, removed))
    with torch.no_grad():
        masked = model(X)
    before = _params(model)
    shrink(model, graph, removed)
    with torch.no_grad():
        shrunk = model(X)
    assert _params(model) < before
    if name != "transformer":  # layer norm statistics see the zeros; the others are exact
        assert torch.allclose(masked, shrunk, atol=1e-5)


def test_channel_pruning_exports_a_smaller_onnx_file(tmp_path):
    model = make(ResidualNet)
    pruned, pruned_stats = eo.apply_with_stats(
        model, eo.PruneConfig(sparsity=0.5, structure="channel"), data=[X])
    assert pruned is not model and _params(pruned) < 0.4 * _params(model)
    assert pruned(X).shape == model(X).shape
    assert pruned.conv1.out_channels == 4 and pruned.bn1.num_features == 4
    assert pruned.fc.in_features == 8 and pruned.proj.out_channels == 8
    small = export_onnx(pruned, tmp_path / "p.onnx", X[:1])
    big = export_onnx(model, tmp_path / "d.onnx", X[:1])
    assert small.stat().st_size < 0.6 * big.stat().st_size
    stats = pruned_stats["prune"]
    assert stats.macs_after < 0.4 * stats.macs_before
    assert stats.channels_removed > 0 and stats.params_after == _params(pruned)


def test_depthwise_conv_stays_depthwise():
    pruned = eo.apply(make(DepthwiseNet), eo.PruneConfig(sparsity=0.5, structure="channel"),
                      data=[X])
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == 4
    assert pruned.pw2.in_channels == 4 and pruned(X).shape == (4, 5)


def test_head_pruning_removes_whole_heads():
    model = make(TinyTransformer)
    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.5, structure="head"), data=[X])
    assert pruned.attn.q_proj.out_features == 8 and pruned.attn.o_proj.in_features == 8
    assert pruned.attn.num_heads == 2
    assert pruned.mlp[0].out_features == 32 and pruned.embed.out_features == 16
    assert pruned(X).shape == (4, 5)


def test_nearly_full_sparsity_keeps_one_channel_per_group():
    exact = AdvancedPrune(round_to=1)
    config = eo.PruneConfig(sparsity=0.99, structure="neuron", advanced=exact)
    pruned = eo.apply(mlp(), config, data=[X])
    assert pruned[1].out_features == 1 and pruned[3].out_features == 1
    config = eo.PruneConfig(sparsity=0.99, structure="neuron", scope="global", advanced=exact)
    pruned = eo.apply(mlp(), config, data=[X])
    assert pruned[1].out_features >= 1 and pruned[3].out_features >= 1
    pruned = eo.apply(mlp(), eo.PruneConfig(sparsity=0.99, structure="neuron"), data=[X])
    assert pruned[1].out_features == 4 and pruned[3].out_features == 4  # default round_to=4


def test_global_scope_prunes_low_groups_more_and_round_to():
    model = mlp()
    with torch.no_grad():
        model[1].weight[:16] *= 0.01  # half of the first layer is nearly dead
    config = eo.PruneConfig(sparsity=0.3, structure="channel", scope="global",
                            advanced=AdvancedPrune(round_to=1))
    pruned = eo.apply(model, config, data=[X])
    assert pruned[1].out_features == 32 - 14 and pruned[3].out_features == 16
    for scope in ("global", "layer"):
        config = eo.PruneConfig(sparsity=0.3, structure="channel", scope=scope)
        pruned = eo.apply(model, config, data=[X])
        assert pruned[1].out_features % 4 == 0 and pruned[3].out_features % 4 == 0
        assert pruned[1].out_features < 32


@pytest.mark.parametrize("criterion", ["l1", "gradient", "taylor", "activation", "random",
                                       "movement", "sensitivity"])
def test_every_criterion_prunes_channels(criterion):
    config = eo.PruneConfig(sparsity=0.5, structure="channel", criterion=criterion)
    model = make(ResidualNet)
    pruned = eo.apply(model, config, data=batches())
    assert _params(pruned) < 0.7 * _params(model) and pruned(X).shape == (4, 5)


def test_excluded_layers_keep_their_channels():
    # an excluded layer keeps its exact shape: channels it reads or writes stay
    config = eo.PruneConfig(sparsity=0.5, structure="channel", exclude=("conv1",))
    pruned = eo.apply(make(ResidualNet), config, data=[X])
    assert pruned.conv1.weight.shape == (8, 8, 3, 3) and pruned.stem[0].out_channels == 8
    assert pruned.down[0].out_channels == 8


def test_activation_scores_rank_dead_channels_last():
    model = mlp()
    with torch.no_grad():
        model[1].bias[:8] = -100.0  # these neurons never fire after the ReLU
        model[1].bias[8:] = 5.0  # these always do
    graph = build_graph(model, X)
    scores = channel_scores(model, graph, eo.PruneConfig(criterion="activation"), [X])
    ids = graph.uses[("1.weight", 0)]
    assert np.all(scores[ids[:8]] < scores[ids[8:]].min())


def test_input_model_is_not_modified():
    model = make(ResidualNet)
    state = copy.deepcopy(model.state_dict())
    eo.apply(model, eo.PruneConfig(sparsity=0.5, structure="channel"), data=[X])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "meta")


def test_nothing_to_remove_names_layers_and_reasons():
    from pruning_models import UnknownOp

    with pytest.raises(ValueError, match=r"no channel of UnknownOp can be removed \('conv': "
                                         r"aten.flip.default"):
        eo.apply(UnknownOp(), eo.PruneConfig(structure="channel"), data=[X])
    with pytest.raises(ValueError, match="structure='head' found no attention heads"):
        eo.apply(make(ResidualNet), eo.PruneConfig(structure="head"), data=[X])


def test_stats_say_why_channels_were_kept():
    pruned, pruned_stats = eo.apply_with_stats(
        mlp(), eo.PruneConfig(sparsity=0.5, structure="channel"), data=[X])
    pinned = pruned_stats["prune"].pinned
    assert pinned == [{"name": "5", "channels": 5, "reasons": ["it reaches the model output"]}]
