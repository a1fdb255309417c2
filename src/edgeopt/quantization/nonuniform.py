"""Non-uniform weight levels: power-of-two (log2) and k-means codebooks (look-up tables).

Pure functions: each returns integer codes and what maps them back to values, so the layer can
store the codes (and the codebook) and the statistics can count the stored bytes.
"""

from __future__ import annotations

import math

import torch

from edgeopt.clustering.primitives import kmeans_1d


def log2_magnitudes(bits: int) -> int:
    """Non-zero magnitudes a signed log2 code of `bits` bits holds: 2^0 .. 2^(m-1), plus zero."""
    return 2 ** (bits - 1) - 1


def _log2_levels(x: torch.Tensor, top: float) -> torch.Tensor:
    """Nearest of {0, 1, 2, 4, ..., top} to each non-negative x (midpoints 0.5 and 1.5 * 2^k)."""
    x = x.clamp(max=top)
    low = torch.exp2(torch.floor(torch.log2(x.clamp(min=1.0))))
    level = torch.where(x >= 1.5 * low, 2 * low, low).clamp(max=top)
    return torch.where(x < 0.5, torch.zeros_like(x), level)


@torch.no_grad()
def log2_quantize(weight: torch.Tensor, bits: int, steps: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: w ~ scale * sign * 2^k with k in [0, m), or 0; nearest in value.

    Returns (levels, scale): `levels` are the integers sign * 2^k (or 0), float32, shaped like
    `weight`. Power-of-two levels repeat every factor of two, so each channel's scale is the
    best (least squared error) of `steps` candidates between amax / top / 2 and amax / top.
    """
    top = 2.0 ** (log2_magnitudes(bits) - 1)
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    amax = flat.abs().amax(dim=1).clamp(min=1e-12)
    best_scale, best_error = amax / top, torch.full_like(amax, float("inf"))
    for alpha in torch.linspace(1.0, 0.5, steps):
        scale = alpha * amax / top
        levels = _log2_levels(flat.abs() / scale[:, None], top)
        error = (levels * scale[:, None] - flat.abs()).pow(2).sum(dim=1)
        better = error < best_error
        best_scale = torch.where(better, scale, best_scale)
        best_error = torch.where(better, error, best_error)
    levels = _log2_levels(flat.abs() / best_scale[:, None], top)
    return (torch.sign(flat) * levels).reshape(weight.shape), best_scale


@torch.no_grad()
def kmeans_codebook(values: torch.Tensor, clusters: int, iterations: int = 30
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One k-means codebook for all of `values`, started evenly between min and max.

    Returns (codebook [clusters], sorted; indices shaped like `values`, int64); the clustering
    technique's row-wise Lloyd iteration does the work.
    """
    flat = values.detach().float().reshape(1, -1)
    clusters = max(1, min(clusters, flat.numel()))
    start = torch.linspace(float(flat.min()), float(flat.max()), clusters)[None]
    codebook, labels = kmeans_1d(flat, torch.ones_like(flat, dtype=torch.bool), start, iterations)
    return codebook[0], labels[0].reshape(values.shape)


def codebook_bytes(numel: int, bits: int, codebook_entries: int) -> int:
    """Stored size of `numel` codes of `bits` bits, packed, plus a float32 codebook."""
    return math.ceil(numel * bits / 8) + 4 * codebook_entries
