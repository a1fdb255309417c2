import torch
from pruning_models import ResidualNet, data, make, mlp

from edgeopt.pruning.graph import build_graph
from edgeopt.pruning.regularization import group_lasso_penalty, l1_penalty, penalized
from edgeopt.pruning.schedules import finetune


def test_l1_is_the_sum_of_absolute_weights():
    model = mlp()
    weights = {"a": model[1].weight, "b": model[3].weight}
    expected = model[1].weight.abs().sum() + model[3].weight.abs().sum()
    assert torch.allclose(l1_penalty(weights), expected)


def test_group_lasso_matches_a_naive_sum_of_channel_norms():
    model = make(ResidualNet)
    graph = build_graph(model, torch.randn(2, 1, 8, 8))
    params = dict(model.named_parameters())
    naive = torch.zeros(graph.num_channels, dtype=torch.float64)
    for (name, dim), ids in graph.uses.items():
        if name in params:
            for index, channel in enumerate(ids.tolist()):
                naive[channel] += params[name].detach().select(dim, index).double().pow(2).sum()
    expected = naive.sqrt().sum()
    assert torch.allclose(group_lasso_penalty(params, graph).double(), expected, rtol=1e-5)


def test_penalized_training_shrinks_the_penalty():
    model = mlp()
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    before = float(l1_penalty(weights).detach())
    finetune(model, data(), None, epochs=2, lr=1e-2, patience=2, batch_size=32, seed=0,
             loss=penalized(lambda: l1_penalty(weights), 1e-2), progress=False)
    assert float(l1_penalty(weights).detach()) < 0.7 * before
