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
