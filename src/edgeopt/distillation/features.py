"""Feature (hint) distillation plumbing: find layers by name, record their outputs, and build
the learned projection that maps a student feature onto the teacher's shape.

Projections come from a table keyed by the per-sample feature rank (1: vectors, 2: sequences,
3: images); extend `PROJECTIONS` for other layouts.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from edgeopt.errors import ConfigError, ModelError

Shape = tuple[int, ...]
ProjectionFactory = Callable[[Shape, Shape], nn.Module]


def resolve_layer(model: nn.Module, name: str, who: str, field: str = "features") -> nn.Module:
    """The submodule called `name`, or an error listing the closest existing names."""
    modules = {n: m for n, m in model.named_modules() if n}
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.4)
    hint = f"close matches: {', '.join(close)}" if close else (
        f"layers are: {', '.join(list(modules)[:20])}{', ...' if len(modules) > 20 else ''}")
    raise ConfigError(f"DistillConfig.{field} names layer {name!r}, which the {who} does not "
                      f"have; {hint}.")


class FeatureTap:
    """Forward hooks that keep the latest output of each named layer while active."""

    def __init__(self, model: nn.Module, names: Sequence[str], who: str) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(names):  # unique, in order
            layer = resolve_layer(model, name, who)
            self._handles.append(layer.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"feature layer {name!r} returns {type(output).__name__}, not a "
                                 "tensor; pick a layer whose output is one tensor.")
            self.features[name] = output

        return record

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()


class _Resize(nn.Module):
    """Adaptive average pooling of the trailing spatial/temporal dims onto a fixed size."""

    def __init__(self, size: Shape) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.size:
            return x
        pool = nn.functional.adaptive_avg_pool1d if len(self.size) == 1 else (
            nn.functional.adaptive_avg_pool2d)
        return pool(x, self.size)


def _conv_projection(conv: type[nn.Module]) -> ProjectionFactory:
    def make(student: Shape, teacher: Shape) -> nn.Module:
        layers: list[nn.Module] = []
        if student[0] != teacher[0]:
            layers.append(conv(student[0], teacher[0], 1, bias=False))
        if student[1:] != teacher[1:]:
            layers.append(_Resize(teacher[1:]))
        return nn.Sequential(*layers)

    return make


def _linear_projection(student: Shape, teacher: Shape) -> nn.Module:
    return nn.Linear(student[0], teacher[0], bias=False)


PROJECTIONS: dict[int, ProjectionFactory] = {
    1: _linear_projection,
    2: _conv_projection(nn.Conv1d),
    3: _conv_projection(nn.Conv2d),
}


def make_projection(student: Shape, teacher: Shape) -> nn.Module:
    """A trainable map from per-sample `student` feature shape onto `teacher`'s (identity if equal)."""
    if student == teacher:
        return nn.Identity()
    factory = PROJECTIONS.get(len(student)) if len(student) == len(teacher) else None
    if factory is None:  # different layouts: flatten, map, reshape
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student), math.prod(teacher),
                                                     bias=False), nn.Unflatten(1, teacher))
    return factory(student, teacher)


def make_exit_head(feature: Shape, num_classes: int) -> nn.Module:
    """A classifier on an intermediate feature: global average pool (if spatial) + linear."""
    pools = {2: nn.AdaptiveAvgPool1d(1), 3: nn.AdaptiveAvgPool2d(1)}
    pool = pools.get(len(feature))
    width = feature[0] if pool is not None else math.prod(feature)
    layers = [pool] if pool is not None else []
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width, num_classes))
