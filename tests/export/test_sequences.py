"""export_onnx on token models: a dynamic sequence axis, its fallback, and the transformer op
translations ONNX Runtime fuses (GELU, attention with a boolean mask)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.export.onnx import export_onnx
from edgeopt.runtime.inspect import census


class Bag(nn.Module):
    """Token ids -> mean of their embeddings -> Linear: any sequence length works."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids).mean(1))


class FixedLength(Bag):
    """Flattens the tokens into one Linear: only the example's length works."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * length, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids).flatten(1))


class Attention(nn.Module):
    """One attention block with a padding mask and an exact GELU feed-forward."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.qkv = nn.Linear(16, 48)
        self.ffn = nn.Linear(16, 32)
        self.causal = causal

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        q, k, v = (t.reshape(*ids.shape, 2, 8).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        mask = None if self.causal else (ids != 0)[:, None, None, :].expand(-1, 2, ids.shape[1], -1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return F.gelu(self.ffn(attended.transpose(1, 2).reshape(x.shape) + x))


def _ort(path: object, ids: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]


def _props(path: object) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_token_inputs_get_dynamic_batch_and_sequence_axes(tmp_path):
    torch.manual_seed(0)
    model = Bag().eval()
    path = export_onnx(model, tmp_path / "bag.onnx", torch.randint(0, 100, (1, 6)))
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert _props(path)["edgeopt.dynamic_sequence"] == "true"
    for shape in [(3, 2), (2, 40)]:
        ids = torch.randint(0, 100, shape)
        np.testing.assert_allclose(_ort(path, ids), model(ids).detach().numpy(), atol=1e-5)
    fixed = export_onnx(model, tmp_path / "fixed.onnx", torch.randint(0, 100, (1, 6)),
                        dynamic_sequence=False)
    assert onnx.load(fixed).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 6
    assert _props(fixed)["edgeopt.dynamic_sequence"] == "false"


def test_model_that_fixes_the_length_keeps_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = FixedLength(6).eval()
    with pytest.warns(UserWarning, match="fixed sequence length of 6"):
        path = export_onnx(model, tmp_path / "f.onnx", torch.randint(0, 100, (1, 6)))
    props = _props(path)
    assert props["edgeopt.dynamic_sequence"] == "false" and props["edgeopt.dynamic_batch"] == "true"
    ids = torch.randint(0, 100, (4, 6))
    np.testing.assert_allclose(_ort(path, ids), model(ids).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_gelu_and_masked_attention_export_as_patterns_the_runtime_fuses(tmp_path, causal):
    torch.manual_seed(0)
    model = Attention(causal).eval()
    ids = torch.randint(1, 50, (3, 9))
    ids[0, 5:] = 0  # padding: masked keys
    path = export_onnx(model, tmp_path / "att.onnx", ids)
    np.testing.assert_allclose(_ort(path, ids), model(ids).detach().numpy(), atol=1e-5)
    ops = census(path)["all_ops"]
    assert ops.get("Gelu", 0) + ops.get("BiasGelu", 0) == 1 and "Erf" not in ops
    assert "IsNaN" not in ops
