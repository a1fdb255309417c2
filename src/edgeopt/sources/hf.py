"""A local transformers folder as a one-input, one-output module (no hub access, ever)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgeopt.errors import ConfigError

_FIELD = "recipe.model.hf"


class HFModel(nn.Module):
    """Wraps a transformers model: token ids (or pixels) in, one tensor out.

    Text models get their attention mask from the ids (padding id = the config's pad token);
    the output is the logits when the model has a head, else the mask-weighted mean of the last
    hidden state (a sentence embedding).
    """

    def __init__(self, model: nn.Module, takes_tokens: bool, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.takes_tokens = takes_tokens
        self.pad_id = pad_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_tokens:
            out = self.model(pixel_values=x)
            logits = getattr(out, "logits", None)
            return logits if logits is not None else out.pooler_output.flatten(1)
        mask = (x != self.pad_id).to(torch.int64)
        out = self.model(input_ids=x, attention_mask=mask)
        logits = getattr(out, "logits", None)
        if logits is not None:
            return logits
        weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def load_hf(folder: Path) -> HFModel:
    """The model in `folder` (config + weights), with the head its config names if any."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only below
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{_FIELD} needs the 'transformers' package: pip install "
                          "transformers.") from None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        model_class = _model_class(transformers, config)
        with _bars_off_when_quiet(transformers):
            model = model_class.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ConfigError(f"{_FIELD}: {str(folder)!r} is not a loadable transformers folder: "
                          f"{type(exc).__name__}: {first}") from None
    takes_tokens = getattr(model, "main_input_name", "input_ids") == "input_ids"
    pad_id = getattr(config, "pad_token_id", None)
    return HFModel(model, takes_tokens, int(pad_id) if pad_id is not None else 0)


@contextlib.contextmanager
def _bars_off_when_quiet(transformers: Any) -> Iterator[None]:
    """transformers' own "Loading weights" bar obeys a quiet run too (edgeopt.progress)."""
    from edgeopt.progress import is_quiet

    bars = transformers.utils.logging
    was_on = bars.is_progress_bar_enabled()
    if is_quiet() and was_on:
        bars.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            bars.enable_progress_bar()


def _model_class(transformers: object, config: object) -> type:
    # The architecture the folder was saved with, e.g. BertForSequenceClassification; a folder
    # without one loads the bare encoder.
    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None)
        if isinstance(found, type):
            return found
    return transformers.AutoModel  # type: ignore[attr-defined]
