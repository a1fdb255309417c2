"""Per-layer profile of a PyTorch model: parameters, bytes, MACs and output shapes.

MACs come from a table keyed by module type (extend it with `register_macs`); figures are per
sample. Functional ops in `forward` (residual adds, matmuls) have no module and no row; peak
activation memory still sees them, through the op-level trace or the ONNX graph.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from edgeopt.data import model_arguments
from edgeopt.profile.memory import ActivationProfile, profile_onnx, trace_activations

_STATISTICS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
MacCounter = Callable[[nn.Module, tuple[Any, ...], torch.Tensor], int]
_MACS: dict[type[nn.Module], MacCounter] = {}


def register_macs(*module_types: type[nn.Module]) -> Callable[[MacCounter], MacCounter]:
    """Decorator: count MACs of `module_types` (and subclasses) as fn(module, inputs, output)."""

    def add(fn: MacCounter) -> MacCounter:
        for kind in module_types:
            _MACS[kind] = fn
        return fn

    return add


@register_macs(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_macs(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    # each output element: (in_channels / groups) x kernel multiply-adds; depthwise: kernel only
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


@register_macs(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_macs(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
    return inputs[0].numel() * per_input


@register_macs(nn.Linear, nn.Bilinear)
def _linear_macs(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    extra = getattr(module, "in2_features", 1)  # Bilinear: x1^T W x2
    return output.numel() * module.in_features * extra


@register_macs(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
)
def _norm_macs(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    return output.numel()  # one scale-and-shift per element (BN folds away on export)


def _macs_of(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    for kind in type(module).__mro__:
        if kind in _MACS:
            return int(_MACS[kind](module, inputs, output))
    return 0


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    name: str
    type: str
    params: int
    param_bytes: int
    macs: int  # per sample, summed over calls (a shared layer runs more than once)
    output_shape: tuple[int, ...]  # of the last call, batch included
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    layers: tuple[LayerProfile, ...]
    params: int  # parameters and weight buffers (see _weights)
    param_bytes: int
    buffer_bytes: int  # every buffer, statistics included
    macs: int  # per sample, summed over the table's layer types
    input_shape: tuple[int, ...]
    activations: ActivationProfile
    activation_source: str  # "onnx" (graph liveness) or "trace" (eager op trace)

    @property
    def peak_activation_bytes(self) -> int:
        return self.activations.peak_bytes

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["peak_activation_bytes"] = self.peak_activation_bytes
        return out

    def to_markdown(self, max_rows: int = 40) -> str:
        from edgeopt.profile.render import markdown_table

        return markdown_table(self, max_rows=max_rows)


@torch.no_grad()
def profile(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
) -> ModelProfile:
    """Profile `model` on `example_input` in eval mode; the model is left exactly as it was.

    Peak activation memory comes from a liveness analysis of the exported graph at `onnx_path`
    when given (what ONNX Runtime runs, batch norm folded), else of an eager ATen op trace.
    """
    args = model_arguments(model, example_input, "profile")
    batch = max(int(args[0].shape[0]), 1) if args[0].dim() else 1
    records: dict[str, dict[str, Any]] = {}
    flags = {m: m.training for m in model.modules()}
    handles = [
        m.register_forward_hook(_recorder(name, records, batch))
        for name, m in model.named_modules()
        if _profiled(m)
    ]
    model.eval()
    try:
        if onnx_path is None:
            activations, source = (
                trace_activations(lambda: model(*args), model, args, batch),
                "trace",
            )
        else:
            model(*args)
            activations, source = profile_onnx(onnx_path), "onnx"
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    return _summarize(model, records, tuple(args[0].shape), activations, source)


def _weights(module: nn.Module, *, recurse: bool) -> list[torch.Tensor]:
    """Parameters plus stored weight buffers (quantized layers keep int8 weights as buffers).

    Normalization statistics are left out: they are state, not weights, and fold on export.
    Shared tensors count once.
    """
    buffers = [
        b
        for name, b in module.named_buffers(recurse=recurse)
        if name.rsplit(".", 1)[-1] not in _STATISTICS
    ]
    return [*module.parameters(recurse=recurse), *buffers]


def _profiled(module: nn.Module) -> bool:
    """Leaves, plus containers that own weights directly (their math has no other row)."""
    return not any(True for _ in module.children()) or bool(_weights(module, recurse=False))


def _recorder(name: str, records: dict[str, dict[str, Any]], batch: int) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        first = tensors[0] if tensors else torch.empty(0)
        entry = records.setdefault(name, {"module": module, "macs": 0, "calls": 0})
        entry["macs"] += _macs_of(module, inputs, first) // batch
        entry["calls"] += 1
        entry["shape"] = tuple(first.shape)

    return hook


def _summarize(
    model: nn.Module,
    records: dict[str, dict[str, Any]],
    input_shape: tuple[int, ...],
    activations: ActivationProfile,
    source: str,
) -> ModelProfile:
    layers = []
    for name, entry in records.items():
        own = _weights(entry["module"], recurse=False)
        layers.append(
            LayerProfile(
                name=name or "<root>",
                type=type(entry["module"]).__name__,
                params=sum(p.numel() for p in own),
                param_bytes=sum(p.numel() * p.element_size() for p in own),
                macs=entry["macs"],
                output_shape=entry["shape"],
                calls=entry["calls"],
            )
        )
    params = _weights(model, recurse=True)
    return ModelProfile(
        layers=tuple(layers),
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        macs=sum(layer.macs for layer in layers),
        input_shape=input_shape,
        activations=activations,
        activation_source=source,
    )
