"""The compression-policy space: a weight bit width per layer, a channel keep ratio per channel
group and (MCU targets) weight clustering, and how a policy becomes recipe stages
(PruneConfig.layer_sparsity, ClusterConfig, then QuantConfig weight_overrides / exclude with
short quantization-aware recovery training).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

FLOAT = 32  # a "bit width" meaning: left in float (host targets only)
# no 0.25: a quarter of a group's channels never recovered in a short trial (27-44 points lost)
KEEP_CHOICES = (0.5, 0.75, 1.0)
# shared weight values per layer of a clustered policy: 4-bit indices into a codebook per row in
# the C export, so an 8-bit layer stores about half its bytes with 16 non-uniform levels
CLUSTERS = 16


@dataclasses.dataclass(frozen=True)
class Policy:
    """bits: layer name -> 4 / 8 / 32 (float); keep: channel group (producing layer) -> ratio;
    clusters: shared weight values per layer (k-means), 0 for none."""

    bits: dict[str, int]
    keep: dict[str, float]
    clusters: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bits": dict(self.bits), "keep": dict(self.keep)}
        if self.clusters:
            out["clusters"] = self.clusters
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls(bits={k: int(v) for k, v in data["bits"].items()},
                   keep={k: float(v) for k, v in data["keep"].items()},
                   clusters=int(data.get("clusters", 0)))

    def label(self) -> str:
        bits = sorted(set(self.bits.values()))
        keep = sum(self.keep.values()) / max(1, len(self.keep))
        shared = f" C{self.clusters}" if self.clusters else ""
        return f"W{'/'.join('f' if b == FLOAT else str(b) for b in bits)} keep {keep:.2f}{shared}"


@dataclasses.dataclass(frozen=True)
class Space:
    layers: tuple[str, ...]  # Conv / Linear layers whose weight width is chosen
    groups: tuple[str, ...]  # channel groups whose keep ratio is chosen
    bit_choices: tuple[int, ...]
    keep_choices: tuple[float, ...] = KEEP_CHOICES
    cluster_choices: tuple[int, ...] = (0,)  # 0: no clustering

    def suggest(self, trial: Any) -> Policy:
        bits = {name: trial.suggest_categorical(f"bits:{name}", self.bit_choices)
                for name in self.layers}
        keep = {name: trial.suggest_categorical(f"keep:{name}", self.keep_choices)
                for name in self.groups}
        clusters = (trial.suggest_categorical("clusters", self.cluster_choices)
                    if len(self.cluster_choices) > 1 else 0)
        return Policy(bits=bits, keep=keep, clusters=clusters)

    def params(self, policy: Policy) -> dict[str, Any]:
        """The trial parameters of `policy` (to enqueue it)."""
        shared = {"clusters": policy.clusters} if len(self.cluster_choices) > 1 else {}
        return {**{f"bits:{k}": v for k, v in policy.bits.items()},
                **{f"keep:{k}": v for k, v in policy.keep.items()}, **shared}

    def uniform(self, bits: int, keep: float = 1.0) -> Policy:
        return Policy(bits=dict.fromkeys(self.layers, bits), keep=dict.fromkeys(self.groups, keep))


def build_space(model: nn.Module, example: torch.Tensor, kind: str) -> Space:
    """Every Conv / Linear layer gets a width; every prunable channel group a keep ratio.
    MCU targets run integer-only C: no float layers there."""
    from edgeopt.pruning.graph import build_graph

    layers = tuple(name for name, m in model.named_modules()
                   if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear))
    graph = build_graph(model.eval(), example)
    groups = tuple(g.name for g in graph.groups if len(g.prunable) >= 4)
    if kind == "mcu":  # clustering saves flash in the C export only (ONNX stores int8 anyway)
        return Space(layers=layers, groups=groups, bit_choices=(4, 8),
                     cluster_choices=(0, CLUSTERS))
    return Space(layers=layers, groups=groups, bit_choices=(4, 8, FLOAT))


def cluster_config(policy: Policy, epochs: int = 0) -> dict[str, Any]:
    """The ClusterConfig of a clustered policy: its 8-bit layers only (4-bit ones already have
    16 levels: clustering them too would put two grids on one layer)."""
    four_bit = sorted(name for name, b in policy.bits.items() if b != 8)
    return {"clusters": policy.clusters, "finetune_epochs": epochs,
            **({"exclude": four_bit} if four_bit else {})}


def policy_stages(policy: Policy, epochs: int = 1, metric: str = "top1"
                  ) -> list[dict[str, Any]]:
    """Recipe stages applying `policy`: channel pruning by layer, then mixed-precision QAT
    (`epochs` of recovery training), activations int8. A clustered policy recovers from pruning
    in float, clusters its 8-bit layers (centroids fine-tuned) and is quantized post-training.
    QAT trains on labels; under a metric
    that compares with the baseline's outputs (data without labels) the pruned model recovers
    by distillation from the baseline instead (KL on logits for `agreement`, MSE on the outputs
    for `cosine`), then is quantized post-training."""
    stages: list[dict[str, Any]] = []
    sparsity = {name: round(1.0 - keep, 4) for name, keep in policy.keep.items() if keep < 1.0}
    if sparsity:
        prune: dict[str, Any] = {"structure": "channel", "sparsity": 0.0,
                                 "layer_sparsity": sparsity}
        if policy.clusters and metric == "top1":  # recovered before clustering fixes the values
            prune["finetune_epochs"] = epochs
        stages.append({"name": "prune", "technique": "prune", "config": prune})
        if metric != "top1":
            stages.append({"name": "recover", "technique": "distill", "config": {
                "epochs": epochs, "alpha": 1.0, "val_fraction": 0.0,
                "logit_loss": "kl" if metric == "agreement" else "mse"}})
    if policy.clusters:  # centroids fine-tuned with the assignments fixed; QAT would undo them
        stages.append({"name": "cluster", "technique": "cluster",
                       "config": cluster_config(policy, epochs if metric == "top1" else 0)})
    overrides = {name: {"bits": b} for name, b in policy.bits.items() if b not in (8, FLOAT)}
    floats = [name for name, b in policy.bits.items() if b == FLOAT]
    # lr 1e-3 (not QAT's 1e-4 default): one short pass recovers from pruning as well
    config: dict[str, Any] = ({"method": "qat", "epochs": epochs, "lr": 1e-3}
                              if metric == "top1" and not policy.clusters else {"method": "ptq"})
    if overrides:
        config["weight_overrides"] = overrides
    if floats:
        config["exclude"] = floats
    stages.append({"name": "search", "technique": "quantize", "config": config,
                   "speed_guard": False})
    return stages
