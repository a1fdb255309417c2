"""Module surgery for clustering: a table of which parameter of which layer type is shared, and a
wrapper that trains the centroids with the assignments fixed (cluster-preserving fine-tuning).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeopt.clustering.primitives import decode

# layer type -> name of the parameter that gets a codebook (extend for other layer types)
CLUSTERED_PARAMS: dict[type[nn.Module], str] = {
    nn.Linear: "weight",
    nn.Conv1d: "weight",
    nn.Conv2d: "weight",
    nn.Conv3d: "weight",
}


def clustered_param(layer: nn.Module) -> str | None:
    """The parameter of `layer` to cluster, or None (exact type match)."""
    return CLUSTERED_PARAMS.get(type(layer))


class ClusteredLayer(nn.Module):
    """Runs `layer` with its weight rebuilt from trainable centroids and fixed codes.

    The layer's own parameter is removed while wrapped; `bake()` puts the shared values back
    as an ordinary parameter and returns the plain layer.
    """

    def __init__(self, layer: nn.Module, param: str, centroids: torch.Tensor,
                 codes: torch.Tensor) -> None:
        super().__init__()
        self.param = param
        self.shape = tuple(getattr(layer, param).shape)
        delattr(layer, param)  # from now on only the codebook defines it
        self.layer = layer
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.register_buffer("codes", codes.detach().clone())

    def weight(self) -> torch.Tensor:
        return decode(self.centroids, self.codes).reshape(self.shape)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        setattr(self.layer, self.param, self.weight())  # a plain tensor attribute, not a param
        return self.layer(*args)

    @torch.no_grad()
    def bake(self) -> nn.Module:
        """The wrapped layer with the shared values as its ordinary parameter again."""
        if hasattr(self.layer, self.param):
            delattr(self.layer, self.param)
        self.layer.register_parameter(self.param, nn.Parameter(self.weight().detach().clone()))
        return self.layer
