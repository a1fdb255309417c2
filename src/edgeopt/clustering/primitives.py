"""Weight-sharing math as pure functions: centroid seeding, batched 1-D k-means, codebooks.

Rows are independent problems (one per output channel, or a single row for a whole layer);
`mask` marks the values that take part (False: an exact zero kept out of the clusters).
A codebook is (centroids (G, k), codes (G, N)) with code 0 meaning "exact zero" and codes
1..k meaning centroid 1..k, so a pruned weight can never be pulled off zero.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cluster_rows", "decode", "init_centroids", "kmeans_1d"]


@torch.no_grad()
def init_centroids(values: torch.Tensor, mask: torch.Tensor, k: int, method: str,
                   seed: int = 0) -> torch.Tensor:
    """(G, k) sorted starting centroids per row from the masked values.

    linear: evenly spaced on [min, max]; density: at quantiles (i + 0.5) / k of the values;
    kmeans++: D^2-weighted seeding (scikit-learn's `kmeans_plusplus`, seeded).
    """
    rows = []
    for g in range(values.shape[0]):
        v = values[g][mask[g]].double()
        if v.numel() == 0:
            rows.append(torch.zeros(k, dtype=torch.float64))
        elif method == "linear":
            rows.append(torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64))
        elif method == "density":
            q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
            rows.append(torch.quantile(v, q))
        elif method == "kmeans++":
            rows.append(_kmeans_pp(v, k, seed + g))
        else:
            raise ValueError(f"unknown init {method!r}; valid: linear, density, kmeans++")
    return torch.stack(rows).sort(dim=1).values.to(values.dtype)


def _kmeans_pp(v: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    from sklearn.cluster import kmeans_plusplus

    points = v.numpy().reshape(-1, 1)
    if len(points) < k:  # fewer points than clusters: repeat them
        points = np.resize(points, (k, 1))
    centers, _ = kmeans_plusplus(points, n_clusters=k, random_state=seed)
    return torch.from_numpy(centers[:, 0].copy())


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (rows of `centroids` sorted ascending)."""
    bounds = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return torch.searchsorted(bounds.contiguous(), values.contiguous())


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor,
              iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on each row: (sorted centroids (G, k), labels (G, N) in [0, k)).

    Masked-out values take no part (their labels are meaningless); a cluster that loses all
    its members keeps its previous centroid.
    """
    v = values.double()
    c = centroids.double().sort(dim=1).values
    weights = mask.double()
    labels = _assign(v, c)
    for _ in range(iterations):
        sums = torch.zeros_like(c).scatter_add_(1, labels, v * weights)
        counts = torch.zeros_like(c).scatter_add_(1, labels, weights)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c).sort(dim=1).values
        new_labels = _assign(v, c)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return c.to(values.dtype), labels


@torch.no_grad()
def cluster_rows(rows: torch.Tensor, k: int, *, init: str = "linear",
                 preserve_sparsity: bool = True, iterations: int = 100,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook of a (G, N) tensor: (centroids (G, k), codes (G, N), 0 = exact zero).

    A row with at most k distinct (nonzero) values keeps them exactly.
    """
    mask = rows != 0 if preserve_sparsity else torch.ones_like(rows, dtype=torch.bool)
    start = init_centroids(rows, mask, k, init, seed)
    for g in range(rows.shape[0]):
        distinct = torch.unique(rows[g][mask[g]])
        if 0 < distinct.numel() <= k:  # exact: pad by repeating the largest value
            start[g] = torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
    centroids, labels = kmeans_1d(rows, mask, start, iterations)
    codes = torch.where(mask, labels + 1, torch.zeros_like(labels))
    return centroids, codes


def decode(centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Weights from a codebook: code 0 -> 0.0, code j -> centroids[:, j - 1]. Differentiable in
    the centroids (each centroid's gradient is the sum over the weights that share it)."""
    table = torch.cat([torch.zeros_like(centroids[:, :1]), centroids], dim=1)
    return table.gather(1, codes)
