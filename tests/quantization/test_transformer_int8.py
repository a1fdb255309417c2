"""int8 transformer encoders: any batch and sequence length, int8 embedding tables, outliers.

A small random BertModel wrapped like a sentence embedder (token ids in, mean-pooled and
L2-normalized embedding out), quantized the default way (static, with calibration data) and
dynamically (no data), run in PyTorch and in ONNX Runtime at shapes calibration never saw.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgeopt as eo
from edgeopt.quantization.config import QuantSpec
from edgeopt.quantization.embedding import QuantizedEmbedding, embedding_spec
from edgeopt.runtime.inspect import census

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, LAYERS = 3000, 64, 2
LINEARS = 6 * LAYERS  # query, key, value, attention output, intermediate, output


class SentenceEncoder(nn.Module):
    """ids [batch, tokens] (0 = padding) -> mean-pooled, L2-normalized embedding."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).to(torch.float32)
        hidden = self.bert(input_ids=ids, attention_mask=mask.to(torch.long)).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def encoder(outliers: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN,
                                     num_hidden_layers=LAYERS, num_attention_heads=4,
                                     intermediate_size=2 * HIDDEN, max_position_embeddings=64)
    model = SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False)).eval()
    if outliers:  # a few channels 30x larger, as trained transformers have
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight[:3] *= 30.0
    return model


def token_ids(n: int, length: int, seed: int) -> torch.Tensor:
    """Random sentences of random lengths, padded with 0 to `length`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    lengths = torch.randint(max(1, length // 3), length + 1, (n,), generator=g)
    ids[torch.arange(length) >= lengths[:, None]] = 0
    return ids


def run_onnx(path, ids: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]


def cosine(a, b) -> float:
    a, b = (torch.as_tensor(np.asarray(t)) for t in (a, b))
    return float(F.cosine_similarity(a, b, dim=-1).min())


@pytest.fixture(scope="module")
def float_model() -> nn.Module:
    return encoder()


@pytest.fixture(scope="module")
def static_int8(float_model) -> nn.Module:
    calibration = [token_ids(16, 16, seed) for seed in range(4)]  # batches of 16 x 16 tokens
    return eo.apply(float_model, eo.QuantConfig(), data=calibration)


@pytest.mark.slow
def test_static_ptq_runs_at_any_batch_and_sequence_length(float_model, static_int8, tmp_path):
    for batch, length in [(1, 5), (3, 23), (5, 16)]:  # calibrated at 16 x 16 only
        ids = token_ids(batch, length, seed=10 + length)
        assert static_int8(ids).shape == (batch, HIDDEN)
        assert cosine(static_int8(ids).detach(), float_model(ids).detach()) > 0.98
    path = eo.export_onnx(static_int8, tmp_path / "static.onnx", token_ids(1, 12, seed=5))
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgeopt.dynamic_batch"] == props["edgeopt.dynamic_sequence"] == "true"
    for batch, length in [(1, 40), (4, 7)]:
        ids = token_ids(batch, length, seed=20 + length)
        assert cosine(run_onnx(path, ids), static_int8(ids).detach()) > 0.999
    counts = census(path)
    assert counts["int8_ops"] == {"MatMulIntegerToFloat": LINEARS}
    assert sum(counts["float_ops"].values()) == 2 * LAYERS  # only the attention's matmuls
    assert "DequantizeLinear" not in counts["qdq_ops"]  # the biases are inside the kernels


@pytest.mark.slow
def test_static_quantizes_linear_inputs_and_keeps_the_residual_stream_float(static_int8):
    def kind(node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return type(static_int8.get_submodule(str(node.target))).__name__
        return str(node.target)

    nodes = list(static_int8.graph.nodes)
    quantizers = [n for n in nodes if kind(n) == "ActQuant"]
    assert len(quantizers) == 4 * LAYERS  # q/k/v share one; attention output; FFN in and out
    assert all(kind(user) == "QuantizedWeightLayer" for q in quantizers for user in q.users)
    residual = [n for n in nodes if kind(n) == "aten.add.Tensor"
                and any(kind(u) == "aten.layer_norm.default" for u in n.users)]
    assert len(residual) == 2 * LAYERS + 1  # embeddings, then two per block
    assert not any(kind(a) == "ActQuant" for n in residual for a in n.args)


@pytest.mark.slow
def test_embedding_tables_are_stored_as_int8(float_model, tmp_path):
    example = token_ids(1, 12, seed=3)
    q, q_stats = eo.apply_with_stats(float_model, eo.QuantConfig(method="dynamic"))
    tables = {n: m for n, m in q.named_modules() if isinstance(m, QuantizedEmbedding)}
    assert len(tables) == 3  # word, position, token type
    word = next(m for n, m in tables.items() if n.endswith("word_embeddings"))
    assert word.weight_q.dtype == torch.int8 and word.weight_scale.shape == (VOCAB, 1)
    rows = [r for r in q_stats["quant"].layers if r["type"] == "Embedding"]
    assert len(rows) == 3 and min(r["weight_sqnr_db"] for r in rows) > 35
    fp32 = eo.export_onnx(float_model, tmp_path / "fp32.onnx", example)
    int8 = eo.export_onnx(q, tmp_path / "int8.onnx", example)
    shapes = {tuple(t.dims): t.data_type for t in onnx.load(int8).graph.initializer}
    assert shapes[(VOCAB, HIDDEN)] == onnx.TensorProto.INT8
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size
    ids = token_ids(6, 20, seed=4)
    assert cosine(run_onnx(int8, ids), float_model(ids).detach()) > 0.99
    counts = census(int8)["int8_ops"]
    assert counts.get("DynamicQuantizeMatMul", 0) + counts.get("MatMulIntegerToFloat", 0) == LINEARS


def test_quantized_embedding_gathers_the_dequantized_rows():
    torch.manual_seed(0)
    table = nn.Embedding(50, 8, padding_idx=0)
    table.weight.data[7] *= 100  # one large row does not coarsen the others
    ids = torch.tensor([[0, 7, 3], [49, 1, 1]])
    for spec in (QuantSpec(), QuantSpec(symmetric=False), QuantSpec(granularity="per_tensor")):
        q = QuantizedEmbedding(table, spec)
        torch.testing.assert_close(q(ids), q.weight()[ids])
        reference = table(ids).detach()
        error = (q(ids) - reference).abs().amax(-1) / reference.abs().amax(-1).clamp(min=1e-9)
        if spec.granularity.value == "per_channel":
            assert float(error.max()) < 0.01
    assert QuantizedEmbedding(table, QuantSpec()).weight_q.dtype == torch.int8


def _output(model: nn.Module, name: str, ids: torch.Tensor) -> torch.Tensor:
    got: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: got.append(out))
    model(ids)
    handle.remove()
    return got[0].detach()


@pytest.mark.slow
def test_default_smooths_token_outliers_and_leaves_other_models_alone():
    model = encoder(outliers=True)
    calibration = [token_ids(16, 16, seed) for seed in range(4)]
    test = token_ids(32, 16, seed=99)
    smoothed, smoothed_stats = eo.apply_with_stats(model, eo.QuantConfig(), data=calibration)
    plain, plain_stats = eo.apply_with_stats(model, eo.QuantConfig(smoothquant=False), data=calibration)
    info = smoothed_stats["quant"].methods["smoothquant"]
    assert info["alpha"] == "auto" and info["layers"] >= 2
    assert "smoothquant" not in plain_stats["quant"].methods
    layer = "bert.encoder.layer.0.intermediate.dense"  # reads the LayerNorm with outliers
    reference = _output(model, layer, test)
    error = [float((_output(m, layer, test) - reference).pow(2).sum() / reference.pow(2).sum())
             for m in (smoothed, plain)]
    assert error[0] < 0.6 * error[1]
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    q, q_stats = eo.apply_with_stats(mlp, eo.QuantConfig(), data=[torch.randn(32, 8)])
    assert "smoothquant" not in q_stats["quant"].methods  # no token sequences: nothing to smooth


def test_embedding_tables_get_8_bits_per_row_unless_an_override_names_them():
    table = nn.Embedding(10, 4)
    four_bit = QuantSpec(bits=4, granularity="per_group", group_size=2)
    spec = embedding_spec("embed", table, eo.QuantConfig(method="weight_only", activations=None,
                                                         weights=four_bit))
    assert (spec.bits, spec.granularity.value) == (8, "per_channel")
    override = eo.QuantConfig(weight_overrides={"Embedding": QuantSpec(bits=6)})
    assert embedding_spec("embed", table, override).bits == 6
    fp16 = eo.QuantConfig(weight_overrides={"embed": QuantSpec(dtype="fp16")})
    assert embedding_spec("embed", table, fp16) is None
