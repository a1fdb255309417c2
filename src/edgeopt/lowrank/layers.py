"""Module surgery for low-rank factorization: a table keyed by layer type and method that turns
one layer and a rank into a `Factorized` sequence of smaller layers, plus the rank rules.

    decomposer = decomposer_for(layer, "tucker")     # None: this layer type is not supported
    rank = decomposer.energy_rank(layer.weight, 0.9)
    new_layer, approx = decomposer.build(layer, rank, iterations=100, seed=0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeopt.lowrank import primitives as P

Rank = Any  # int (SVD, CP) or (r_out, r_in) (Tucker-2)
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CP_SEARCH_ITERATIONS = 30  # ALS sweeps per trial rank while searching (the final fit uses more)


class Factorized(nn.Sequential):
    """One layer replaced by a product of smaller layers; `method` and `rank` say how."""

    def __init__(self, *layers: nn.Module, method: str, rank: Rank) -> None:
        super().__init__(*layers)
        self.method = method
        self.rank = rank

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}"


@torch.no_grad()
def _set(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach()


def _conv(layer: nn.Module, cin: int, cout: int, kernel: Any = 1, **spatial: Any) -> nn.Module:
    kind = _CONV[layer.weight.dim() - 2]
    return kind(cin, cout, kernel, bias=False, **spatial).to(layer.weight.dtype)


def _spatial(layer: nn.Module) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
            "padding_mode": layer.padding_mode}


def _last(layer: nn.Module, cin: int) -> nn.Module:
    """The final 1x1 conv (or Linear) that restores the output width and carries the bias."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(cin, layer.out_features, bias=layer.bias is not None)
    kind = _CONV[layer.weight.dim() - 2]
    return kind(cin, layer.out_channels, 1, bias=layer.bias is not None).to(layer.weight.dtype)


def build_svd(layer: nn.Module, rank: int, **_: Any) -> tuple[Factorized, torch.Tensor]:
    """Linear -> Linear(in, r) + Linear(r, out); conv -> conv with r filters + 1x1 conv."""
    weight = layer.weight.detach()
    left, right = P.svd_factors(weight.reshape(weight.shape[0], -1), rank)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
    else:
        first = _conv(layer, layer.in_channels, rank, layer.kernel_size, **_spatial(layer))
    module = Factorized(_set(first, right), _set(_last(layer, rank), left, _bias(layer)),
                        method="svd", rank=rank)
    return module, (left @ right).reshape(weight.shape)


def build_tucker(layer: nn.Module, rank: tuple[int, int], *, iterations: int = 100,
                 **_: Any) -> tuple[Factorized, torch.Tensor]:
    """Conv -> 1x1 (in -> r_in) -> core kxk (r_in -> r_out, original stride) -> 1x1 (-> out)."""
    r_out, r_in = rank
    core, first, last = P.tucker2_factors(layer.weight.detach(), (r_out, r_in),
                                          iterations=iterations)
    module = Factorized(
        _set(_conv(layer, layer.in_channels, r_in), first),
        _set(_conv(layer, r_in, r_out, layer.kernel_size, **_spatial(layer)), core),
        _set(_last(layer, r_out), last, _bias(layer)),
        method="tucker", rank=(r_out, r_in))
    return module, P.tucker2_reconstruct(core, first, last).to(layer.weight.dtype)


def build_cp(layer: nn.Module, rank: int, *, iterations: int = 100, seed: int = 0,
             **_: Any) -> tuple[Factorized, torch.Tensor]:
    """Conv -> 1x1 (in -> R) -> one depthwise conv per kernel dim (Lebedev et al.) -> 1x1."""
    factors = P.cp_factors(layer.weight.detach(), rank, iterations=iterations, seed=seed)
    layers = [_set(_conv(layer, layer.in_channels, rank), factors[1].T)]
    ndim = layer.weight.dim() - 2
    for d in range(ndim):
        depthwise = _CONV[ndim](rank, rank, _along(layer.kernel_size, d, 1),
                                stride=_along(layer.stride, d, 1),
                                padding=_along(layer.padding, d, 0),
                                dilation=_along(layer.dilation, d, 1), groups=rank, bias=False)
        layers.append(_set(depthwise.to(layer.weight.dtype), factors[2 + d].T))
    layers.append(_set(_last(layer, rank), factors[0], _bias(layer)))
    return Factorized(*layers, method="cp", rank=rank), P.cp_reconstruct(factors).to(
        layer.weight.dtype)


def _along(value: Any, dim: int, other: int) -> Any:
    """`value` on spatial dim `dim`, `other` on the rest ('same' / 'valid' pass through)."""
    if isinstance(value, str):
        return value
    return tuple(v if i == dim else other for i, v in enumerate(value))


def _energy_cp(weight: torch.Tensor, energy: float, iterations: int, seed: int) -> int:
    """Smallest CP rank (binary search up to break-even) keeping `energy`."""
    low, high = 1, P.cp_break_even_rank(weight)
    while low < high:
        mid = (low + high) // 2
        factors = P.cp_factors(weight, mid, iterations=min(iterations, _CP_SEARCH_ITERATIONS),
                               seed=seed)
        if P.energy_kept(weight, P.cp_reconstruct(factors)) >= energy:
            high = mid
        else:
            low = mid + 1
    return low


def _budget_tucker(weight: torch.Tensor, budget: float) -> tuple[int, int]:
    """Ranks (rho*out, rho*in) whose three factors hold <= budget * weight.numel() numbers."""
    out, cin, k = weight.shape[0], weight.shape[1], math.prod(weight.shape[2:])
    a, b, c = out * cin * k, cin * cin + out * out, -budget * weight.numel()
    rho = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, math.floor(rho * out)), max(1, math.floor(rho * cin))


@dataclasses.dataclass(frozen=True)
class Decomposer:
    """How one method factorizes one layer type and chooses its rank."""

    method: str
    build: Callable[..., tuple[Factorized, torch.Tensor]]
    max_rank: Callable[[torch.Tensor], int]
    energy_rank: Callable[[torch.Tensor, float, int, int], Rank]
    budget_rank: Callable[[torch.Tensor, float], Rank]
    fixed_rank: Callable[[int], Rank] = lambda r: r


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


SVD = Decomposer(
    method="svd", build=build_svd, max_rank=P.svd_max_rank,
    energy_rank=lambda w, e, it, s: P.energy_rank(P.singular_values(_matrix(w)), e),
    budget_rank=lambda w, b: max(1, math.floor(b * w.numel() / sum(_matrix(w).shape))))
TUCKER = Decomposer(
    method="tucker", build=build_tucker, max_rank=lambda w: min(w.shape[0], w.shape[1]),
    energy_rank=lambda w, e, it, s: P.tucker2_energy_ranks(w, e),
    budget_rank=_budget_tucker, fixed_rank=lambda r: (r, r))
CP = Decomposer(
    method="cp", build=build_cp, max_rank=P.cp_break_even_rank, energy_rank=_energy_cp,
    budget_rank=lambda w, b: max(1, math.floor(b * w.numel() / sum(w.shape))))

# (layer type, method) -> decomposer. Linear layers are matrices: Tucker-2 and CP of a matrix
# are its truncated SVD, so every method uses SVD for them.
DECOMPOSERS: dict[tuple[type[nn.Module], str], Decomposer] = {
    (nn.Linear, "svd"): SVD, (nn.Linear, "tucker"): SVD, (nn.Linear, "cp"): SVD,
    **{(conv, m.method): m for conv in _CONV.values() for m in (SVD, TUCKER, CP)},
}


def decomposer_for(layer: nn.Module, method: str) -> Decomposer | None:
    """The decomposer for `layer` (exact type) or None; grouped convolutions are not supported."""
    if getattr(layer, "groups", 1) != 1:
        return None
    if method == "cp" and getattr(layer, "padding_mode", "zeros") != "zeros":
        return None  # the separable depthwise chain is only exact with zero padding
    return DECOMPOSERS.get((type(layer), method))


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Linear / ConvNd leaves for one sample of `input_shape`."""
    total = 0

    def hook(layer: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features
        else:
            total += output.numel() * (layer.in_channels // layer.groups) * math.prod(
                layer.kernel_size)

    leaves = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d |
                                                         nn.Conv3d)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), dtype=next(module.parameters()).dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total
