"""Tiny seeded models and helpers shared by the advanced-quantization tests."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F


def settle_batch_norm(model: nn.Module, data: torch.Tensor) -> nn.Module:
    """Give every BatchNorm the running statistics of `data` (as training would), then eval."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        for batch in data.split(64):
            model(batch)
    return model.eval()


def images(n: int = 128, seed: int = 0, size: int = 8) -> torch.Tensor:
    """Structured inputs (not plain noise): a per-sample offset plus smooth noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size, size, generator=g)
    smooth = torch.nn.functional.avg_pool2d(base, 3, 1, 1)
    return 1.5 + 2.0 * smooth + 0.3 * torch.randn(n, 1, 1, 1, generator=g)


def ds_cnn(seed: int = 0, relu6: bool = True) -> nn.Module:
    """conv-BN-ReLU, depthwise-BN-ReLU6, pointwise-BN-ReLU, global pool, Linear; BN settled."""
    torch.manual_seed(seed)
    act = nn.ReLU6 if relu6 else nn.ReLU
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), act(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():  # uneven channel ranges, as trained depthwise layers have
        model[3].weight.mul_(torch.logspace(-1, 1, 8).reshape(8, 1, 1, 1))
        for bn in (model[1], model[4], model[7]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 1.0)
    return settle_batch_norm(model, images(256, seed=99))


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def correlated_layer(seed: int = 0):
    """A Linear layer whose inputs are strongly correlated: rounding choices interact, so
    nearest rounding is not the best (with white inputs it would be)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(24, 24, generator=g)
    x = torch.randn(512, 24, generator=g) @ mixing
    w = torch.randn(16, 24, generator=g) * 0.2
    scale = (w.abs().amax(dim=1, keepdim=True) / 7).expand_as(w).contiguous()
    return w, scale, torch.zeros_like(w), x, F.linear(x, w)
