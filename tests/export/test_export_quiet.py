"""export_onnx recovers from a failed dynamic-batch attempt with one warning and no traceback."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edgeopt.export.onnx import export_onnx


class FixedBatch(nn.Module):
    """Reshapes to a batch of 2: the 'dynamic' export fails at any other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(2, 8))


def test_fallback_to_static_batch_prints_no_traceback(tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(FixedBatch(), tmp_path / "m.onnx", torch.randn(2, 8))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Error" not in out + err
    assert out == "" and err == ""
    assert [str(w.message) for w in caught if "dynamic batch" in str(w.message)]
