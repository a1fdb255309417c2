"""Small quantized zoo models and their QDQ ONNX files, shared by the integer-core tests (cached per session)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

import edgeopt as eo

# Small inputs keep the tests fast; every zoo architecture and op kind is still exercised.
SHAPES = {"lenet300": (1, 8, 8), "lenet5": (1, 16, 16), "dscnn": (1, 25, 10), "resnet8": (3, 16, 16),
          "tcn1d": (3, 32)}
POW2 = (eo.QuantSpec(power_of_two_scale=True),  # (weights, activations) with power-of-two scales
        eo.QuantSpec(symmetric=False, granularity="per_tensor", power_of_two_scale=True))
_DIR = Path(tempfile.mkdtemp(prefix="edgeopt-deploy-tests-"))


def inputs(name: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPES[name], generator=g)


@functools.cache
def quantized(name: str, weights: eo.QuantSpec | None = None, activations: eo.QuantSpec | None = None):
    """(quantized module, QDQ ONNX path) of zoo model `name`, calibrated on 16 random inputs."""
    torch.manual_seed(0)
    model = eo.zoo.create(name, SHAPES[name], 10).eval()
    config = eo.QuantConfig(**{k: v for k, v in (("weights", weights), ("activations", activations)) if v})
    q = eo.apply(model, config, data=[inputs(name, 16, seed=1)])
    tag = "int8" if weights is None else f"w{weights.bits}{'p2' if weights.power_of_two_scale else ''}"
    path = eo.export_onnx(q, _DIR / f"{name}-{tag}.onnx", inputs(name, 1))
    return q, path
