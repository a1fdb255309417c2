"""Tiny models and data shared by tests: fast, seeded, no files."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_mlp(in_features: int = 16, num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes)
    )


def tiny_cnn(channels: int = 1, num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def toy_classification(
    n: int = 256, shape: tuple[int, ...] = (16,), num_classes: int = 4, seed: int = 0
) -> TensorDataset:
    """Linearly separable-ish blobs: class k is shifted along a class-specific direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    centers = torch.randn(num_classes, *shape, generator=g) * 2.0
    inputs = centers[labels] + torch.randn(n, *shape, generator=g)
    return TensorDataset(inputs, labels)


def write_labeled_images(folder, size: int, counts: dict[str, int]) -> None:
    """`folder`/<split>.npz of random (1, size, size) images, each labeled 1 where the mean of
    its top half is positive (a rule a small CNN can learn)."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        x = rng.normal(size=(n, 1, size, size)).astype(np.float32)
        y = (x[:, 0, : size // 2].mean((1, 2)) > 0).astype(np.int64)
        np.savez(folder / f"{split}.npz", x=x, y=y)
