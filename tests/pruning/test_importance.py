"""Criteria and mask math against naive references."""

import itertools

import pytest
import torch

from edgeopt.errors import DataError
from edgeopt.pruning.importance import (
    CRITERIA,
    Signals,
    global_masks,
    layer_masks,
    nm_mask,
    position_scores,
)

G = torch.Generator().manual_seed(0)


def _w(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def test_elementwise_criteria_match_formulas():
    w, g1, g2 = _w(4, 6), _w(4, 6) * 0.1, _w(4, 6) * 0.2
    sig = Signals(grad_sum=g1 + g2, grad_abs_sum=g1.abs() + g2.abs(), batches=2,
                  input_norm=torch.arange(1.0, 7.0))
    assert torch.equal(CRITERIA["magnitude"](w, None, G), w.abs())
    assert torch.allclose(CRITERIA["gradient"](w, sig, G), (g1.abs() + g2.abs()) / 2)
    assert torch.allclose(CRITERIA["taylor"](w, sig, G), w.abs() * (g1.abs() + g2.abs()) / 2)
    assert torch.allclose(CRITERIA["movement"](w, sig, G), -w * (g1 + g2))
    expected = torch.stack([w[:, j].abs() * (j + 1) for j in range(6)], dim=1)
    assert torch.allclose(CRITERIA["activation"](w, sig, G), expected)


def test_activation_criterion_broadcasts_over_conv_kernels():
    w = _w(3, 2, 3, 3)
    norm = torch.tensor([1.0, 10.0])
    out = CRITERIA["activation"](w, Signals(input_norm=norm), G)
    assert torch.allclose(out[:, 1], w[:, 1].abs() * 10) and torch.allclose(out[:, 0], w[:, 0].abs())


def test_random_is_reproducible_and_data_criteria_need_signals():
    w = _w(5, 5)
    a = CRITERIA["random"](w, None, torch.Generator().manual_seed(7))
    b = CRITERIA["random"](w, None, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for name in ("gradient", "taylor", "activation", "movement"):
        with pytest.raises(DataError, match=f"criterion={name!r} needs data"):
            CRITERIA[name](w, None, G)


def test_position_scores_match_loops():
    s = _w(3, 4, 2, 2)
    for dim, power in itertools.product(range(4), (1, 2)):
        out = position_scores(s, dim, power)
        naive = [float(sum(v ** power for v in s.select(dim, i).reshape(-1).tolist()))
                 for i in range(s.shape[dim])]
        assert torch.allclose(out, torch.tensor(naive, dtype=torch.float64), atol=1e-9)


def test_nm_mask_keeps_n_largest_of_every_m_inputs():
    s = _w(6, 8)
    mask = nm_mask(s.abs(), 2, 4)
    for row in range(6):
        for start in (0, 4):
            block = s[row, start:start + 4].abs()
            kept = set(torch.nonzero(mask[row, start:start + 4]).reshape(-1).tolist())
            assert kept == set(block.topk(2).indices.tolist())


def test_nm_mask_groups_conv_inputs_at_each_kernel_position():
    s = _w(2, 8, 3, 3).abs()
    mask = nm_mask(s, 1, 4)
    per_group = mask.reshape(2, 2, 4, 3, 3).sum(dim=2)  # 4 consecutive input channels
    assert bool((per_group == 1).all())


def test_layer_masks_exact_count_and_keep_one():
    scores = {"a": _w(10, 10).abs(), "b": _w(3).abs()}
    masks = layer_masks(scores, {"a": 0.37, "b": 0.99})
    assert int(masks["a"].sum()) == 63
    assert int(masks["b"].sum()) == 1 and bool(masks["b"][scores["b"].argmax()])
    kept_min = scores["a"][masks["a"]].min()
    assert bool((scores["a"][~masks["a"]] <= kept_min).all())


def test_global_masks_one_threshold_with_cap():
    scores = {"small": torch.full((10,), 0.1), "big": torch.linspace(1, 2, 30)}
    masks = global_masks(scores, 0.5, max_sparsity=0.8)
    # 20 weights go: the 10 small ones would all go, but the cap keeps 2 of them
    assert int((~masks["small"]).sum()) == 8
    assert int((~masks["big"]).sum()) == 10
    assert bool(masks["big"][-20:].all())
