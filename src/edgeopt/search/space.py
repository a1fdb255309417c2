"""The compression-policy space: a weight bit width per layer, a channel keep ratio per channel
group, a low-rank energy and (MCU targets) weight clustering, and how a policy becomes recipe
stages (PruneConfig.layer_sparsity, LowRankConfig, ClusterConfig, then QuantConfig
weight_overrides / exclude with short quantization-aware recovery training).

Low-rank factorization replaces a layer `fc` by the factors `fc.0` and `fc.1`; the policy's
widths stay keyed by the original names, and a factor takes the width of the layer it replaced
(`layer_bits`, `layer_patterns`).
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
# share of each layer's squared singular values kept by a truncated SVD; 1.0: not factorized.
# Below 0.7 the small convolutions of a ResNet-8 lose rank 3-8 of 9-16 (measured: 0.7 already
# halves their parameters); the factorizer keeps only factors that save parameters and MACs
ENERGY_CHOICES = (1.0, 0.9, 0.8, 0.7)


@dataclasses.dataclass(frozen=True)
class Policy:
    """bits: layer name -> 4 / 8 / 32 (float); keep: channel group (producing layer) -> ratio;
    clusters: shared weight values per layer (k-means), 0 for none; energy: low-rank (SVD)
    energy kept in every layer, 1.0 for none."""

    bits: dict[str, int]
    keep: dict[str, float]
    clusters: int = 0
    energy: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bits": dict(self.bits), "keep": dict(self.keep)}
        if self.clusters:
            out["clusters"] = self.clusters
        if self.energy < 1.0:
            out["energy"] = self.energy
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls(bits={k: int(v) for k, v in data["bits"].items()},
                   keep={k: float(v) for k, v in data["keep"].items()},
                   clusters=int(data.get("clusters", 0)), energy=float(data.get("energy", 1.0)))

    def label(self) -> str:
        bits = "/".join("f" if b == FLOAT else str(b) for b in sorted(set(self.bits.values())))
        keep = sum(self.keep.values()) / max(1, len(self.keep))
        return f"W{bits} keep {keep:.2f}{self.extras()}"

    def extras(self) -> str:
        """" C16" for clustering, " E0.8" for low-rank energy: what bits and keep do not say."""
        return (f" C{self.clusters}" if self.clusters else "") + (
            f" E{self.energy:g}" if self.energy < 1.0 else "")


@dataclasses.dataclass(frozen=True)
class Space:
    layers: tuple[str, ...]  # Conv / Linear layers whose weight width is chosen
    groups: tuple[str, ...]  # channel groups whose keep ratio is chosen
    bit_choices: tuple[int, ...]
    keep_choices: tuple[float, ...] = KEEP_CHOICES
    cluster_choices: tuple[int, ...] = (0,)  # 0: no clustering
    energy_choices: tuple[float, ...] = (1.0,)  # 1.0: no low-rank factorization

    def suggest(self, trial: Any) -> Policy:
        bits = {name: trial.suggest_categorical(f"bits:{name}", self.bit_choices)
                for name in self.layers}
        keep = {name: trial.suggest_categorical(f"keep:{name}", self.keep_choices)
                for name in self.groups}
        clusters = (trial.suggest_categorical("clusters", self.cluster_choices)
                    if len(self.cluster_choices) > 1 else 0)
        if 8 not in bits.values():  # only 8-bit layers are clustered: none, no clustering
            clusters = 0
        energy = (trial.suggest_categorical("energy", self.energy_choices)
                  if len(self.energy_choices) > 1 else 1.0)
        return Policy(bits=bits, keep=keep, clusters=clusters, energy=energy)

    def params(self, policy: Policy) -> dict[str, Any]:
        """The trial parameters of `policy` (to enqueue it)."""
        shared = {"clusters": policy.clusters} if len(self.cluster_choices) > 1 else {}
        if len(self.energy_choices) > 1:
            shared["energy"] = policy.energy
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
                     cluster_choices=(0, CLUSTERS), energy_choices=ENERGY_CHOICES)
    return Space(layers=layers, groups=groups, bit_choices=(4, 8, FLOAT),
                 energy_choices=ENERGY_CHOICES)


def layer_bits(bits: dict[str, int], name: str, default: int = 8) -> int:
    """The width of layer `name` under a policy's `bits`: a low-rank factor (`fc.1`) takes the
    width of the layer it replaced (`fc`). Only Conv / Linear layers are keys, and such a layer
    has no children unless factorization made it a sequence, so the nearest keyed ancestor is
    the replaced layer."""
    while name:
        if name in bits:
            return bits[name]
        name = name.rpartition(".")[0]
    return default


def layer_patterns(policy: Policy, names: list[str]) -> list[str]:
    """Name patterns (QuantConfig / ClusterConfig fnmatch) for `names` and, in a factorized
    policy, their low-rank factors."""
    if policy.energy >= 1.0:
        return list(names)
    return [p for name in names for p in with_factors(name)]


def with_factors(name: str) -> tuple[str, str]:
    """Patterns for layer `name` and the low-rank factors that may replace it (`fc.0`, `fc.1`)."""
    return name, f"{name}.*"


def cluster_config(policy: Policy, epochs: int = 0) -> dict[str, Any]:
    """The ClusterConfig of a clustered policy: its 8-bit layers only (4-bit ones already have
    16 levels: clustering them too would put two grids on one layer)."""
    four_bit = layer_patterns(policy, sorted(n for n, b in policy.bits.items() if b != 8))
    return {"clusters": policy.clusters, "finetune_epochs": epochs,
            **({"exclude": four_bit} if four_bit else {})}


def lowrank_config(policy: Policy, epochs: int = 0) -> dict[str, Any]:
    """The LowRankConfig of a factorized policy: truncated SVD of every layer at its energy
    (a layer stays whole where its factors would not save both parameters and MACs)."""
    return {"method": "svd", "energy": policy.energy, "finetune_epochs": epochs}


def policy_stages(policy: Policy, epochs: int = 1, metric: str = "top1"
                  ) -> list[dict[str, Any]]:
    """Recipe stages applying `policy`: channel pruning by layer, then mixed-precision QAT
    (`epochs` of recovery training), activations int8. A factorized or clustered policy
    recovers in float first, after its last change of shape (pruning, then low-rank
    factorization of the pruned layers, its ranks read off the pruned weights as the cost model
    reads them). A clustered one then clusters its 8-bit layers (centroids fine-tuned) and is
    quantized post-training (QAT would move the weights off their shared values). QAT trains on
    labels; under a metric that compares with the baseline's outputs (data without labels) the
    changed model recovers by distillation from the baseline instead (KL on logits for
    `agreement`, MSE on the outputs for `cosine`), then is quantized post-training."""
    labeled = metric == "top1"
    sparsity = {name: round(1.0 - keep, 4) for name, keep in policy.keep.items() if keep < 1.0}
    stages: list[dict[str, Any]] = []
    if sparsity:
        stages.append({"name": "prune", "technique": "prune", "config": {
            "structure": "channel", "sparsity": 0.0, "layer_sparsity": sparsity}})
    if policy.energy < 1.0:
        stages.append({"name": "lowrank", "technique": "lowrank",
                       "config": lowrank_config(policy)})
    in_float = bool(policy.clusters) or policy.energy < 1.0
    if stages and in_float and labeled:  # before clustering fixes the values / QAT starts
        stages[-1]["config"]["finetune_epochs"] = epochs
    if stages and not labeled:
        stages.append({"name": "recover", "technique": "distill", "config": {
            "epochs": epochs, "alpha": 1.0, "val_fraction": 0.0,
            "logit_loss": "kl" if metric == "agreement" else "mse"}})
    if policy.clusters:  # centroids fine-tuned with the assignments fixed; QAT would undo them
        stages.append({"name": "cluster", "technique": "cluster",
                       "config": cluster_config(policy, epochs if labeled else 0)})
    config: dict[str, Any] = {"method": "ptq"}
    if labeled and not policy.clusters:
        # lr 1e-3 (not QAT's 1e-4 default): one short pass recovers from pruning as well. A
        # factorized model is recovered in float first (QAT straight from the factors lost up
        # to 80 points on ResNet-8 / MNIST), then QAT at 1e-4 adapts it to the grid (4-bit:
        # 96.8-97.6 %; PTQ instead: 80-96 %)
        config = {"method": "qat", "epochs": epochs, "lr": 1e-4 if in_float else 1e-3}
    config.update(quant_layers(policy))
    stages.append({"name": "search", "technique": "quantize", "config": config,
                   "speed_guard": False})
    return stages


def quant_layers(policy: Policy) -> dict[str, Any]:
    """QuantConfig's `weight_overrides` (layers that are not 8-bit) and `exclude` (float
    layers) of `policy`, by name pattern (low-rank factors included)."""
    overrides = {pattern: {"bits": b} for name, b in policy.bits.items() if b not in (8, FLOAT)
                 for pattern in layer_patterns(policy, [name])}
    floats = layer_patterns(policy, [name for name, b in policy.bits.items() if b == FLOAT])
    return {**({"weight_overrides": overrides} if overrides else {}),
            **({"exclude": floats} if floats else {})}
