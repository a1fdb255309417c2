"""Architectures edgeopt did not write: transformers models built from config (random weights).

Channel pruning at 30 % and 50 % must give a model that runs, exports to ONNX and keeps the
original output shapes; ViT and BERT lose whole attention heads.
"""

import pytest
import torch

import edgeopt as eo
from edgeopt.export.onnx import export_onnx

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def _models():
    t = transformers
    t.logging.set_verbosity_error()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    vit = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, image_size=32, patch_size=8, num_labels=5)
    bert = t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, vocab_size=100, max_position_embeddings=32,
                        num_labels=5)
    tokens = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    return {
        "resnet": (t.ResNetForImageClassification, t.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
            num_labels=5), image),
        "mobilenet_v2": (t.MobileNetV2ForImageClassification, t.MobileNetV2Config(
            depth_multiplier=0.35, image_size=32, num_labels=5), image),
        "vit": (t.ViTForImageClassification, vit, image),
        "bert": (t.BertForSequenceClassification, bert, tokens),
    }


def _build(name):
    cls, config, x = _models()[name]
    torch.manual_seed(0)
    return cls(config).eval(), x


def _shapes(out):
    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out)
            if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "vit", "bert"])
def test_channel_pruning_runs_exports_and_keeps_output_shapes(name, tmp_path):
    model, x = _build(name)
    dense = sum(p.numel() for p in model.parameters())
    for sparsity in (0.3, 0.5):
        pruned = eo.apply(model, eo.PruneConfig(sparsity=sparsity, structure="channel"), data=[x])
        assert sum(p.numel() for p in pruned.parameters()) < (1.0 - sparsity / 2) * dense
        with torch.no_grad():
            assert _shapes(pruned(x)) == _shapes(model(x))
    # checked against PyTorch in ORT (random weights give large activations: 1e-3 relative)
    export_onnx(pruned, tmp_path / f"{name}.onnx", x, atol=1e-3)


@pytest.mark.parametrize("name,attention", [("vit", "vit.layers.0.attention"),
                                            ("bert", "bert.encoder.layer.0.attention.self")])
def test_head_pruning_removes_whole_heads(name, attention):
    model, x = _build(name)
    pruned = eo.apply(model, eo.PruneConfig(sparsity=0.5, structure="head"), data=[x])
    module = pruned.get_submodule(attention)
    query = getattr(module, "q_proj", None) or module.query
    assert query.out_features == 16 and module.num_attention_heads == 2
    assert _shapes(pruned(x)) == _shapes(model(x))
