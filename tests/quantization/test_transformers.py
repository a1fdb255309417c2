"""PTQ on architectures the project did not write: `transformers` classes with random weights."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgeopt as eo
from edgeopt.runtime.inspect import census

transformers = pytest.importorskip("transformers")


class Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _models():
    t = transformers
    return {
        "resnet": (t.ResNetForImageClassification(t.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), (3, 32, 32)),
        "mobilenet_v2": (t.MobileNetV2ForImageClassification(t.MobileNetV2Config(
            image_size=32, num_labels=5, depth_multiplier=0.35)), (3, 32, 32)),
        "vit": (t.ViTForImageClassification(t.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=5)), (3, 32, 32)),
        "bert": (t.BertForSequenceClassification(t.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=3)), None),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "vit", "bert"])
def test_ptq_exports_runs_int8_and_agrees(name, tmp_path):
    torch.manual_seed(0)
    model, shape = _models()[name]
    model = Logits(model.eval())
    x = torch.randint(0, 100, (64, 8)) if shape is None else torch.randn(64, *shape)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(), data=[x[:32]])
    path = eo.export_onnx(q, tmp_path / f"{name}.onnx", x[:1])
    counts = census(path)
    assert sum(counts["int8_ops"].values()) >= 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    simulated = q(x).detach().numpy()
    assert (deployed.argmax(-1) == simulated.argmax(-1)).mean() >= 0.995
    assert np.isfinite(deployed).all()


@pytest.mark.slow
def test_dynamic_and_weight_only_need_no_graph():
    model, _ = _models()["bert"]
    model = Logits(model.eval())
    x = torch.randint(0, 100, (4, 8))
    for config in (eo.QuantConfig(method="dynamic"),
                   eo.QuantConfig(method="weight_only", activations=None)):
        q, q_stats = eo.apply_with_stats(model, config)
        stats = q_stats["quant"]
        assert len(stats.quantized_layers) == 14 + 3  # Linear layers and embedding tables
        assert q(x).shape == model(x).shape


@pytest.mark.slow
def test_smoothquant_folds_into_exported_layer_norms_and_gptq_runs_without_a_graph(tmp_path):
    # (whether it helps is measured in bench/bench_quant_advanced.py and test_smoothquant.py)
    torch.manual_seed(0)
    vit, shape = _models()["vit"]
    model = Logits(vit.eval())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:2] *= 10.0  # outlier channels
    x = torch.randn(96, *shape)
    smoothed, smoothed_stats = eo.apply_with_stats(model, eo.QuantConfig(smoothquant=True), data=[x[:48]])
    test = x[48:]
    stats = smoothed_stats["quant"].methods["smoothquant"]
    assert stats["folded"] >= 4  # q/k/v and the MLP input read a LayerNorm in every block
    path = eo.export_onnx(smoothed, tmp_path / "vit_sq.onnx", test[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {session.get_inputs()[0].name: test.numpy()})[0]
    assert (deployed.argmax(-1) == smoothed(test).detach().numpy().argmax(-1)).mean() >= 0.98

    bert, _ = _models()["bert"]
    ids = torch.randint(0, 100, (32, 8))
    group = eo.QuantSpec(bits=4, granularity="per_group", group_size=16)
    q, q_stats = eo.apply_with_stats(Logits(bert.eval()), eo.QuantConfig(method="weight_only", activations=None,
                                                     weights=group, rounding="gptq"), data=[ids])
    rows = [r for r in q_stats["quant"].layers if r["type"] == "Linear"]
    assert len(rows) == 14 and all(r["gptq_loss"] <= r["gptq_loss_nearest"] for r in rows)
