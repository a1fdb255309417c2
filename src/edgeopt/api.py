"""The one verb: apply(model, config, *, data=None, teacher=None) -> nn.Module."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from edgeopt.config import Config
from edgeopt.errors import ConfigTypeError
from edgeopt.registry import Applied, handler_for, load_techniques


def apply(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Apply one compression technique, chosen by the config's type, and return the new model.

    `data` is a DataLoader, a Dataset or an iterable of batches (tensor or (inputs, targets)).
    The input model is not modified; the returned model still runs forward in PyTorch.
    """
    return apply_with_stats(model, config, data=data, teacher=teacher).model


def apply_with_stats(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    teacher: nn.Module | None = None,
) -> Applied:
    """`apply`, also returning what the technique recorded (per-layer sparsity, bits, ranks,
    curves...) as `Applied(model, stats)`; statistics never ride on the model object."""
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(config, Config):
        raise ConfigTypeError(
            f"config must be an edgeopt config such as QuantConfig; got {type(config).__name__}."
        )
    handler = handler_for(config)
    kwargs: dict[str, Any] = {"data": data}
    if teacher is not None:
        kwargs["teacher"] = teacher
    return handler(model, config, **kwargs)


__all__ = ["Applied", "apply", "apply_with_stats", "load_techniques"]
