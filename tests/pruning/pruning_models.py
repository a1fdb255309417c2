"""Tiny synthetic models and data shared by the pruning tests (fixed seeds, 8x8 inputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 5)).eval()


class ResidualNet(nn.Module):
    """Stem, an identity residual block, a strided block with a 1x1 projection, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16))
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)
        x = self.relu3(self.down(x) + self.proj(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)) + x)


class BlockNet(nn.Module):
    """A stem and four bypassable residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(8) for _ in range(4)))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Two branches (4 and 6 channels) concatenated, a conv over the concat, flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        x = F.max_pool2d(F.relu(self.c(x)), 2)
        return self.fc(torch.flatten(x, 1))


class DepthwiseNet(nn.Module):
    """Pointwise 1->8, depthwise 3x3 (ties in and out channels), BN, pointwise 8->12, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(1, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pw2 = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.dw(F.relu(self.pw1(x)))))
        x = F.relu(self.pw2(x))
        return self.fc(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention written like transformers' (view with -1 heads)."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class TinyTransformer(nn.Module):
    """Patch embedding (8x8 -> 4 tokens of 16), one pre-norm layer, mean pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 16)
        self.norm1, self.attn = nn.LayerNorm(16), Attention()
        self.norm2 = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 4, 16))
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens.mean(dim=1))


class HardcodedView(nn.Module):
    """Flattens with a literal size: the conv's channels cannot change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).view(x.shape[0], 256))  # literal size


class UnknownOp(nn.Module):
    """Flips channels (an op without a rule): the conv's channels cannot change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.flip(self.conv(x), dims=[1]).mean(dim=(2, 3)))


def init_bn(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics so folding and slicing are actually exercised."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def make(cls: type) -> nn.Module:
    torch.manual_seed(0)
    return init_bn(cls())


def data(n: int = 96, seed: int = 0) -> torch.utils.data.TensorDataset:
    """A learnable 5-class problem: the label is which image quadrant/center is brightest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    y = torch.randint(0, 5, (n,), generator=g)
    spots = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)), (slice(4, 8), slice(0, 4)),
             (slice(4, 8), slice(4, 8)), (slice(2, 6), slice(2, 6))]
    for i in range(n):
        rows, cols = spots[int(y[i])]
        x[i, 0, rows, cols] += 1.0
    return torch.utils.data.TensorDataset(x, y)


def batches(n: int = 96, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data(n).tensors
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
