"""Weight-clustering config: how many shared values, where they start, what keeps them."""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar

from edgeopt.config import Config
from edgeopt.errors import invalid

MAX_CLUSTERS = 256  # one byte per index in the stored codebook


class Init(str, enum.Enum):
    LINEAR = "linear"  # evenly spaced between the min and max weight (Han et al.: best accuracy)
    DENSITY = "density"  # at evenly spaced quantiles of the weight distribution
    KMEANS_PP = "kmeans++"  # k-means++ seeding (Arthur & Vassilvitskii), seeded


class Granularity(str, enum.Enum):
    PER_LAYER = "per_layer"  # one codebook per layer
    PER_CHANNEL = "per_channel"  # one codebook per output channel (row of the weight)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig(Config):
    """Share weights: each layer's weights take one of `clusters` values (1-D k-means).

    With `preserve_sparsity`, exact zeros stay zero and are not a cluster (pruned weights
    remain pruned, also through fine-tuning). `finetune_epochs > 0` trains the centroids on
    `data` with the assignments fixed: each centroid's gradient is the sum of its weights'
    gradients (Deep Compression). Biases stay in float. `layers` / `exclude` are fnmatch
    patterns on module names; by default every Linear and ConvNd weight is clustered.
    """

    kind: ClassVar[str] = "cluster"

    clusters: int = 16
    init: Init = Init.LINEAR
    granularity: Granularity = Granularity.PER_LAYER
    preserve_sparsity: bool = True
    iterations: int = 100
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.clusters <= MAX_CLUSTERS:
            raise invalid("ClusterConfig.clusters", f"an int in [2, {MAX_CLUSTERS}]",
                          self.clusters)
        if self.iterations < 1:
            raise invalid("ClusterConfig.iterations", "an int >= 1", self.iterations)
        if self.finetune_epochs < 0:
            raise invalid("ClusterConfig.finetune_epochs", "an int >= 0", self.finetune_epochs)
        if not self.lr > 0:
            raise invalid("ClusterConfig.lr", "a float > 0", self.lr)
        if self.batch_size < 1:
            raise invalid("ClusterConfig.batch_size", "an int >= 1", self.batch_size)
