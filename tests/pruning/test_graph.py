"""Dependency-graph groups on residual, concat, depthwise, flatten->linear and attention nets."""

import torch
from pruning_models import (
    ConcatNet,
    DepthwiseNet,
    HardcodedView,
    ResidualNet,
    TinyTransformer,
    UnknownOp,
    make,
    mlp,
)

from edgeopt.pruning.graph import build_graph

X = torch.randn(2, 1, 8, 8)


def _group(graph, member):
    found = [g for g in graph.groups if member in g.members]
    assert len(found) == 1, f"{member} in {len(found)} groups"
    return found[0]


def test_residual_add_ties_every_branch_and_consumer():
    g = build_graph(make(ResidualNet), X)
    stream = _group(g, ("stem.0.weight", 0))
    assert {("stem.1.weight", 0), ("stem.1.running_var", 0), ("conv2.weight", 0),
            ("bn2.bias", 0), ("conv1.weight", 1), ("down.0.weight", 1),
            ("proj.weight", 1)} <= set(stream.members)
    inner = _group(g, ("conv1.weight", 0))
    assert set(inner.members) == {("conv1.weight", 0), ("bn1.weight", 0), ("bn1.bias", 0),
                                  ("bn1.running_mean", 0), ("bn1.running_var", 0),
                                  ("conv2.weight", 1)}
    down = _group(g, ("down.0.weight", 0))
    assert ("proj.weight", 0) in down.members and ("fc.weight", 1) in down.members
    assert len(down.channels) == 16 and not down.pinned


def test_classifier_outputs_are_pinned():
    g = build_graph(mlp(), X)
    out = _group(g, ("5.weight", 0))
    assert len(out.prunable) == 0 and len(out.pinned) == 5
    hidden = _group(g, ("1.weight", 0))
    assert ("3.weight", 1) in hidden.members and len(hidden.prunable) == 32


def test_concat_lines_up_both_branches_in_the_consumer():
    g = build_graph(ConcatNet().eval(), X)
    a, b = _group(g, ("a.weight", 0)), _group(g, ("b.weight", 0))
    assert ("c.weight", 1) in a.members and ("c.weight", 1) in b.members
    ids = g.uses[("c.weight", 1)]
    assert set(ids[:4].tolist()) == set(a.channels) and set(ids[4:].tolist()) == set(b.channels)


def test_flatten_repeats_a_channel_over_its_spatial_positions():
    g = build_graph(ConcatNet().eval(), X)
    c = _group(g, ("c.weight", 0))
    ids = g.uses[("fc.weight", 1)]
    assert len(ids) == 128
    for k, channel in enumerate(sorted(c.channels, key=lambda ch: list(ids).index(ch))):
        assert (ids[16 * k:16 * (k + 1)] == channel).all()


def test_depthwise_ties_input_and_output_channels():
    g = build_graph(make(DepthwiseNet), X)
    group = _group(g, ("pw1.weight", 0))
    assert {("dw.weight", 0), ("bn.weight", 0), ("pw2.weight", 1)} <= set(group.members)
    assert len(group.channels) == 8


def test_attention_heads_are_channels_of_q_k_v_and_output_columns():
    g = build_graph(TinyTransformer().eval(), X)
    heads = _group(g, ("attn.q_proj.weight", 0))
    assert heads.kind == "head" and len(heads.channels) == 4
    assert {("attn.k_proj.weight", 0), ("attn.v_proj.bias", 0),
            ("attn.o_proj.weight", 1)} <= set(heads.members)
    q = g.uses[("attn.q_proj.weight", 0)]
    assert all(len(set(q[4 * h:4 * h + 4].tolist())) == 1 for h in range(4))
    hidden = _group(g, ("embed.weight", 0))  # residual stream: embedding, norms, projections
    assert {("norm1.weight", 0), ("attn.o_proj.weight", 0), ("mlp.2.weight", 0),
            ("head.weight", 1)} <= set(hidden.members)


def test_literal_sizes_and_unknown_ops_pin_channels():
    for model in (HardcodedView(), UnknownOp()):
        g = build_graph(model.eval(), X)
        conv = _group(g, ("conv.weight", 0))
        assert len(conv.prunable) == 0, type(model).__name__


def test_graph_leaves_the_model_untouched():
    model = make(ResidualNet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph(model, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_copies_share_one_graph_inside_reuse_graphs_and_prune_alike(monkeypatch):
    import copy

    import numpy as np

    import edgeopt as eo
    from edgeopt.pruning import graph as graph_module
    from edgeopt.pruning.graph import reuse_graphs
    from edgeopt.pruning.structured import channel_scores

    model = make(ResidualNet)
    config = eo.PruneConfig(structure="channel", sparsity=0.5, criterion="activation")
    alone = eo.apply(model, config, data=[X])
    traces = []
    real_export = graph_module.export_program
    monkeypatch.setattr(graph_module, "export_program",
                        lambda m, x: traces.append(m) or real_export(m, x))
    with reuse_graphs():
        first = build_graph(model, X)
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.stem[0].weight.mul_(-1.0)  # same structure, other weights
        assert build_graph(other, X) is first and first.program is None
        # a shared graph's activations come from the model scored, not from the first copy
        scores = [channel_scores(m, first, config, [X]) for m in (model, other)]
        assert not np.allclose(*scores)
        shared = eo.apply(model, config, data=[X])
        assert build_graph(shared, X) is not first  # pruned: another structure
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(),
                                                 shared.state_dict().values()))
    # traced: the first copy's graph, the two scored models' programs, the pruned copy's program
    # for its scores (its graph was shared) and the pruned shape's new graph
    assert [id(t) for t in traces] == [id(model), id(model), id(other), id(shared), id(shared)]


def test_a_one_shot_prune_traces_the_model_once(monkeypatch):
    import edgeopt as eo
    from edgeopt.pruning import graph as graph_module

    traces = []
    real_export = graph_module.export_program
    monkeypatch.setattr(graph_module, "export_program",
                        lambda m, x: traces.append(m) or real_export(m, x))
    eo.apply(make(ResidualNet), eo.PruneConfig(structure="channel", sparsity=0.5), data=[X])
    assert len(traces) == 1
