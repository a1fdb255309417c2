"""Shared helpers: write a user's model module, weights and data into a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

MODEL_CODE = '''
import torch.nn as nn


def build(num_classes=4, inputs=6):
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


def pair():
    return nn.Bilinear(2, 2, 2)


def broken():
    raise RuntimeError("no GPU found")


def not_a_model():
    return 42
'''


def write_model(folder: Path, module: str = "user_net") -> Path:
    (folder / f"{module}.py").write_text(MODEL_CODE)
    return folder / f"{module}.py"


def trained_weights(folder: Path, num_classes: int = 4, inputs: int = 6) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, num_classes))
    path = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def blobs(n: int, seed: int, labels: bool = True, classes: int = 4, inputs: int = 6):
    """Separable Gaussian blobs: class c centred at 3 * e_c."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, inputs)).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return {"x": x, "y": y.astype(np.int64)} if labels else {"x": x}


def write_npz(folder: Path, labels: bool = True) -> tuple[Path, Path]:
    train, test = folder / "train.npz", folder / "test.npz"
    np.savez(train, **blobs(400, 0, labels))
    np.savez(test, **blobs(120, 1, labels))
    return train, test
