"""k-means weight sharing against references: Lloyd vs scikit-learn, seeding, codebooks."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from edgeopt.clustering.primitives import cluster_rows, decode, init_centroids, kmeans_1d


def _values(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, generator=g) * 0.1 - 0.5,
                      torch.randn(n, generator=g) * 0.2 + 0.4]).reshape(1, -1)


def test_lloyd_matches_scikit_learn_from_the_same_start():
    v = _values()
    mask = torch.ones_like(v, dtype=torch.bool)
    start = init_centroids(v, mask, 6, "linear")
    ours, labels = kmeans_1d(v, mask, start, iterations=300)
    ref = KMeans(n_clusters=6, init=start.double().numpy().reshape(-1, 1), n_init=1,
                 max_iter=300, tol=0, algorithm="lloyd").fit(v.double().numpy().reshape(-1, 1))
    np.testing.assert_allclose(ours[0].numpy(), np.sort(ref.cluster_centers_[:, 0]), atol=1e-5)
    nearest = (v[0, :, None] - ours[0][None, :]).abs().argmin(1)
    assert torch.equal(labels[0], nearest)


def test_initializations():
    v = _values()
    mask = torch.ones_like(v, dtype=torch.bool)
    linear = init_centroids(v, mask, 5, "linear")[0]
    assert linear[0] == v.min() and linear[-1] == pytest.approx(float(v.max()))
    assert torch.allclose(linear.diff(), linear.diff()[0].expand(4), atol=1e-6)
    density = init_centroids(v, mask, 4, "density")[0]
    expected = torch.quantile(v[0].double(), torch.tensor([0.125, 0.375, 0.625, 0.875],
                                                          dtype=torch.float64))
    torch.testing.assert_close(density.double(), expected, atol=1e-6, rtol=0)
    a = init_centroids(v, mask, 4, "kmeans++", seed=3)
    b = init_centroids(v, mask, 4, "kmeans++", seed=3)
    assert torch.equal(a, b) and all(x in v[0] for x in a[0])  # seeds are data points
    assert torch.all(a[0][1:] >= a[0][:-1])


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_cluster_rows_keeps_zeros_out_of_the_clusters(init):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 200, generator=g)
    w[w.abs() < 0.5] = 0.0
    centroids, codes = cluster_rows(w, 8, init=init)
    out = decode(centroids, codes)
    assert torch.equal(out == 0, w == 0)  # zeros stay zero, nonzeros stay nonzero
    assert out[out != 0].abs().min() > 0.3  # no shared value was dragged towards the zeros
    assert all(torch.unique(row[row != 0]).numel() <= 8 for row in out)  # one codebook per row
    assert codes.max() <= 8 and codes.min() >= 0


def test_per_row_codebooks_and_exact_small_rows():
    w = torch.tensor([[1.0, 2.0, 2.0, 0.0, 3.0], [5.0, -1.0, 4.0, 4.5, 7.0]])
    centroids, codes = cluster_rows(w, 3)
    out = decode(centroids, codes)
    assert torch.equal(out[0], w[0])  # three distinct nonzero values: kept exactly
    assert torch.unique(out[1]).numel() <= 3
    dense_centroids, dense_codes = cluster_rows(w, 3, preserve_sparsity=False)
    assert (dense_codes > 0).all()  # zero is an ordinary value when sparsity is not kept


def test_centroid_gradient_is_the_sum_of_shared_weight_gradients():
    centroids = torch.tensor([[-1.0, 0.5, 2.0]], requires_grad=True)
    codes = torch.tensor([[1, 3, 3, 0, 2, 1]])
    weights = decode(centroids, codes)
    upstream = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    (weights * upstream).sum().backward()
    torch.testing.assert_close(centroids.grad, torch.tensor([[0.7, 0.5, 0.5]]))
    assert weights[0, 3] == 0.0
