"""Low-rank math against naive references: rank rules, reconstruction error vs energy."""

import pytest
import torch

from edgeopt.lowrank import primitives as P


def _naive_energy_rank(s: torch.Tensor, energy: float) -> int:
    total = float((s**2).sum())
    kept = 0.0
    for r, value in enumerate(s.tolist(), start=1):
        kept += value**2
        if kept >= energy * total - 1e-12:
            return r
    return len(s)


@pytest.mark.parametrize("energy", [0.1, 0.5, 0.9, 0.99, 1.0])
def test_energy_rank_matches_naive(energy):
    s = P.singular_values(torch.randn(20, 12, generator=torch.Generator().manual_seed(0)))
    assert P.energy_rank(s, energy) == _naive_energy_rank(s, energy)


def test_energy_rank_edge_cases():
    assert P.energy_rank(torch.zeros(5), 0.9) == 1
    assert P.energy_rank(torch.tensor([3.0, 0.0, 0.0]), 1.0) == 1


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_svd_reconstruction_error_follows_energy(energy):
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(1))
    s = P.singular_values(w)
    rank = P.energy_rank(s, energy)
    left, right = P.svd_factors(w, rank)
    assert left.shape == (24, rank) and right.shape == (rank, 40)
    kept = P.energy_kept(w, left @ right)
    expected = float((s[:rank] ** 2).sum() / (s**2).sum())
    assert kept == pytest.approx(expected, abs=1e-5)  # Eckart-Young: the error is the tail
    assert kept >= energy - 1e-6
    if rank > 1:  # one rank less would not have been enough
        l2, r2 = P.svd_factors(w, rank - 1)
        assert P.energy_kept(w, l2 @ r2) < energy


def test_svd_full_rank_is_exact_and_balanced():
    w = torch.randn(6, 9)
    left, right = P.svd_factors(w, 6)
    torch.testing.assert_close(left @ right, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left.norm(dim=0), right.norm(dim=1), atol=1e-5, rtol=1e-5)


def test_tucker2_full_rank_is_exact_and_energy_ranks_keep_energy():
    w = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    core, first, last = P.tucker2_factors(w, (8, 6))
    assert core.shape == (8, 6, 3, 3) and first.shape == (6, 6) and last.shape == (8, 8)
    torch.testing.assert_close(P.tucker2_reconstruct(core, first, last).float(), w, atol=1e-4,
                               rtol=1e-4)
    ranks = P.tucker2_energy_ranks(w, 0.7)
    core, first, last = P.tucker2_factors(w, ranks)
    assert P.energy_kept(w, P.tucker2_reconstruct(core, first, last)) >= 0.7 - 1e-6
    assert ranks[0] <= 8 and ranks[1] <= 6


def test_cp_recovers_a_low_rank_tensor():
    g = torch.Generator().manual_seed(3)
    factors = [torch.randn(d, 3, generator=g) for d in (6, 5, 3, 3)]
    w = P.cp_reconstruct(factors).float()
    fitted = P.cp_factors(w, 3, iterations=300)
    assert [f.shape for f in fitted] == [(6, 3), (5, 3), (3, 3), (3, 3)]
    assert P.energy_kept(w, P.cp_reconstruct(fitted)) > 0.999


def test_rank_limits():
    w = torch.zeros(16, 8, 3, 3)
    assert P.svd_max_rank(w) == 16
    assert P.cp_break_even_rank(w) == (16 * 8 * 9 - 1) // (16 + 8 + 3 + 3)
