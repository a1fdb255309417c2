"""The clustering handler: pick layers, check the cluster count, build codebooks, optionally
fine-tune the centroids, write the shared values back, and record sizes per layer."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import time
from typing import Any

import torch
from torch import nn

from edgeopt.clustering.config import ClusterConfig, Granularity
from edgeopt.clustering.modules import ClusteredLayer, clustered_param
from edgeopt.clustering.primitives import cluster_rows, decode
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.registry import Applied, register
from edgeopt.storage import stored_size
from edgeopt.surgery import set_submodule
from edgeopt.training import fit


@dataclasses.dataclass
class ClusterStats:
    """What clustering did, per layer and for the whole model's stored size."""

    clusters: int
    init: str
    granularity: str
    preserve_sparsity: bool
    layers: list[dict[str, Any]]
    finetune_loss: list[float]
    stored_bytes: int  # whole model in the compressed codebook container (storage.py)
    stored_bytes_before: int  # the input model in the same container
    dense_bytes: int  # whole model as dense float32
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@register(ClusterConfig)
def cluster(model: nn.Module, config: ClusterConfig, *, data: Any = None) -> Applied:
    """Return a copy of `model` whose chosen weights share `clusters` values per layer/channel."""
    if config.finetune_epochs and data is None:
        raise DataError("ClusterConfig.finetune_epochs > 0 needs training data; pass data=...")
    start = time.perf_counter()
    out = copy.deepcopy(model).eval()
    targets = _targets(out, config)
    _check_distinct(targets, config)
    before = stored_size(model)
    wrapped = {}
    for name, layer, param in targets:
        weight = getattr(layer, param).detach()
        groups = weight.shape[0] if config.granularity is Granularity.PER_CHANNEL else 1
        centroids, codes = cluster_rows(weight.reshape(groups, -1), config.clusters,
                                        init=config.init.value,
                                        preserve_sparsity=config.preserve_sparsity,
                                        iterations=config.iterations, seed=config.seed)
        wrapped[name] = ClusteredLayer(layer, param, centroids, codes)
        set_submodule(out, name, wrapped[name])
    history = None
    if config.finetune_epochs:
        history = fit(out, data, epochs=config.finetune_epochs, lr=config.lr,
                      batch_size=config.batch_size, seed=config.seed,
                      desc="fine-tune (clusters)")
    layer_stats = []
    for name, module in wrapped.items():
        layer_stats.append(_layer_stats(name, module, config))
        set_submodule(out, name, module.bake())
    after = stored_size(out)
    stats = ClusterStats(
        clusters=config.clusters, init=config.init.value, granularity=config.granularity.value,
        preserve_sparsity=config.preserve_sparsity, layers=layer_stats,
        finetune_loss=history.train_loss if history else [], stored_bytes=after.total_bytes,
        stored_bytes_before=before.total_bytes, dense_bytes=after.dense_bytes,
        seconds=time.perf_counter() - start)
    for record in after.tensors:
        for entry in layer_stats:
            if record.name == f"{entry['name']}.{entry['param']}":
                entry.update(stored_bytes=record.stored_bytes, encoding=record.encoding)
    return Applied(out.eval(), {"cluster": stats})


def _targets(model: nn.Module, config: ClusterConfig) -> list[tuple[str, nn.Module, str]]:
    found = []
    for name, layer in model.named_modules():
        param = clustered_param(layer)
        if param is None or getattr(layer, param, None) is None:
            continue
        if not name:
            raise ModelError("the model is a single layer; wrap it (nn.Sequential(layer)) so "
                             "clustering can replace it.")
        if config.layers and not any(fnmatch.fnmatchcase(name, p) for p in config.layers):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            continue
        found.append((name, layer, param))
    if not found:
        raise ModelError(f"no layer to cluster (layers={list(config.layers)}, "
                         f"exclude={list(config.exclude)}); clustering handles "
                         "Linear and ConvNd weights.")
    return found


def _check_distinct(targets: list[tuple[str, nn.Module, str]], config: ClusterConfig) -> None:
    """More clusters than a layer has distinct weights is an error, before any k-means."""
    for name, layer, param in targets:
        weight = getattr(layer, param).detach()
        if not torch.isfinite(weight).all():
            raise ModelError(f"layer {name!r} has NaN or inf weights; fix the model first.")
        values = weight[weight != 0] if config.preserve_sparsity else weight.flatten()
        distinct = int(torch.unique(values).numel())
        if config.clusters > distinct:
            what = "distinct nonzero weights" if config.preserve_sparsity else "distinct weights"
            raise ConfigError(
                f"ClusterConfig.clusters={config.clusters} is more than the {distinct} {what} "
                f"of layer {name!r}; use clusters <= {distinct} or exclude that layer "
                f"(exclude=[{name!r}]).")


@torch.no_grad()
def _layer_stats(name: str, module: ClusteredLayer, config: ClusterConfig) -> dict[str, Any]:
    weight = decode(module.centroids, module.codes)
    original = module.shape
    nonzero = int((module.codes != 0).sum())
    distinct = [int(torch.unique(row[code != 0]).numel())
                for row, code in zip(weight, module.codes)]
    return {
        "name": name, "param": module.param, "shape": list(original),
        "clusters": config.clusters, "codebooks": int(module.centroids.shape[0]),
        "max_distinct_per_codebook": max(distinct), "sparsity": 1.0 - nonzero / weight.numel(),
        "index_bits": math.ceil(math.log2(config.clusters + (nonzero < weight.numel()))),
        "centroids": module.centroids.detach().flatten().tolist()[:config.clusters],
    }
