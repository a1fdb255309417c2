"""Low-rank math as pure functions on weight tensors: spectra, rank rules and factorizations.

Weights follow PyTorch layouts: Linear (out, in); ConvNd (out, in, *kernel). Every function is
@torch.no_grad and returns new tensors in the input's dtype.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from edgeopt.errors import ModelError

__all__ = [
    "cp_factors",
    "energy_kept",
    "energy_rank",
    "mode_singular_values",
    "singular_values",
    "svd_factors",
    "tucker2_energy_ranks",
    "tucker2_factors",
]


@torch.no_grad()
def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D tensor (descending), computed in float64."""
    return torch.linalg.svdvals(matrix.detach().double())


@torch.no_grad()
def mode_singular_values(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Singular values of the mode-`mode` unfolding (mode fibres as rows)."""
    unfolded = weight.detach().movedim(mode, 0).reshape(weight.shape[mode], -1)
    return singular_values(unfolded)


@torch.no_grad()
def energy_rank(values: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2); 1 for an all-zero spectrum."""
    squares = values.double() ** 2
    total = float(squares.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(squares, 0) / total
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64)))
    return min(max(rank + 1, 1), len(values))


@torch.no_grad()
def energy_kept(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """1 - ||W - W_approx||^2 / ||W||^2 (1.0 for an all-zero W)."""
    total = float(weight.double().pow(2).sum())
    if total == 0.0:
        return 1.0
    return 1.0 - float((weight.double() - approx.double()).pow(2).sum()) / total


@torch.no_grad()
def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (m, r), right (r, n)) with left @ right the best rank-r approximation of `matrix`.

    The singular values are split as sqrt(s) into both factors, so neither dominates when the
    factorized layers are fine-tuned.
    """
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    left = u[:, :rank] * root
    right = root[:, None] * vh[:rank]
    return left.to(matrix.dtype), right.to(matrix.dtype)


@torch.no_grad()
def tucker2_factors(
    weight: torch.Tensor, ranks: tuple[int, int], *, iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 on modes (out, in): (core (r_out, r_in, *k), first (r_in, in), last (out, r_out)).

    W ~= core x_0 last x_1 first^T; factors are orthonormal (HOOI from an SVD start, tensorly).
    """
    from tensorly.decomposition import partial_tucker

    array = weight.detach().double().numpy()
    with _one_blas_thread():
        result = partial_tucker(array, rank=list(ranks), modes=[0, 1], n_iter_max=iterations,
                                init="svd", tol=1e-8)
    core, (last, first) = result[0] if isinstance(result[0], tuple) else result
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(weight.dtype)  # noqa: E731
    return as_tensor(core), as_tensor(first.T), as_tensor(last)


@torch.no_grad()
def tucker2_energy_ranks(weight: torch.Tensor, energy: float, steps: int = 20) -> tuple[int, int]:
    """Smallest per-mode ranks (r_out, r_in) whose HOSVD projection keeps `energy`.

    Both ranks follow one per-mode energy threshold, raised from `energy` towards 1 until the
    projection onto the leading mode-0 and mode-1 singular vectors keeps `energy` overall
    (per-mode thresholds alone would keep less than asked).
    """
    w = weight.detach().double()
    bases, spectra = [], []
    for mode in (0, 1):
        u, s, _ = torch.linalg.svd(w.movedim(mode, 0).reshape(w.shape[mode], -1),
                                   full_matrices=False)
        bases.append(u)
        spectra.append(s)
    total = float(w.pow(2).sum())
    ranks = (w.shape[0], w.shape[1])
    for step in range(steps + 1):
        threshold = energy + (1.0 - energy) * step / steps
        ranks = (energy_rank(spectra[0], threshold), energy_rank(spectra[1], threshold))
        core = torch.einsum("oi...,oa,ib->ab...", w, bases[0][:, : ranks[0]],
                            bases[1][:, : ranks[1]])
        if total == 0.0 or float(core.pow(2).sum()) >= (energy - 1e-9) * total:
            return ranks
    return ranks


@torch.no_grad()
def tucker2_reconstruct(core: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """W from Tucker-2 factors: core x_0 last x_1 first^T."""
    return torch.einsum("ab...,oa,bi->oi...", core.double(), last.double(), first.double())


@torch.no_grad()
def cp_factors(
    weight: torch.Tensor, rank: int, *, iterations: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    """CP (PARAFAC) factors, one (dim, rank) matrix per mode, the weights folded into the first.

    W[o, i, k1, ...] ~= sum_r F0[o, r] F1[i, r] F2[k1, r] ...
    """
    from tensorly.decomposition import parafac

    array = weight.detach().double().numpy()
    for init in ("svd", "random"):
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore")  # tensorly warns when the rank exceeds a mode's size
            try:
                cp = parafac(array, rank=rank, n_iter_max=iterations, init=init, tol=1e-7,
                             random_state=seed, normalize_factors=False)
            except np.linalg.LinAlgError:
                continue
        factors = [torch.from_numpy(np.ascontiguousarray(f)) for f in cp.factors]
        factors[0] = factors[0] * torch.from_numpy(np.asarray(cp.weights))[None, :]
        if all(torch.isfinite(f).all() for f in factors):
            return [_balance(f, factors).to(weight.dtype) for f in factors]
    raise ModelError(f"CP decomposition of a {tuple(weight.shape)} weight diverged at rank "
                     f"{rank}; use a smaller rank.")


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """tensorly's many tiny numpy calls run 10-30x slower with multithreaded BLAS on busy CPUs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _balance(factor: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """Rescale each rank-one term so every mode's column has the same norm (same product)."""
    norms = torch.stack([f.norm(dim=0) for f in factors])  # (modes, rank)
    geometric = norms.clamp_min(1e-30).log().mean(0).exp()
    return factor * (geometric / factor.norm(dim=0).clamp_min(1e-30))


@torch.no_grad()
def cp_reconstruct(factors: list[torch.Tensor]) -> torch.Tensor:
    """W from CP factors (one (dim, rank) matrix per mode)."""
    letters = "abcdefgh"[: len(factors)]
    spec = ",".join(f"{c}r" for c in letters) + "->" + letters
    return torch.einsum(spec, *(f.double() for f in factors))


def svd_max_rank(weight: torch.Tensor) -> int:
    return min(weight.shape[0], math.prod(weight.shape[1:]))


def cp_break_even_rank(weight: torch.Tensor) -> int:
    """The largest CP rank whose factors hold fewer numbers than the weight itself."""
    return max(1, (weight.numel() - 1) // sum(weight.shape))
