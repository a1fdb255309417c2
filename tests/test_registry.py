"""One registry, and a conformance test every registered technique must pass."""

import copy

import pytest
import torch

import edgeopt as eo
from edgeopt.errors import EdgeoptError
from edgeopt.export.onnx import export_onnx
from edgeopt.registry import RegistryError, register, techniques
from edgeopt.runtime.measure import measure
from helpers import toy_classification

# Per technique: a fast config, and one invalid field value with the field it must name.
CASES = {
    "quantize": (lambda: eo.QuantConfig(calibration_samples=64), ("calibration", "maxmin")),
    "prune": (lambda: eo.PruneConfig(sparsity=0.5, structure="channel"), ("sparsity", 1.5)),
    "distill": (lambda: eo.DistillConfig(epochs=1), ("temperature", -1.0)),
    "lowrank": (lambda: eo.LowRankConfig(method="svd", energy=0.9), ("energy", 2.0)),
    "cluster": (lambda: eo.ClusterConfig(clusters=8), ("clusters", 0)),
}


def test_every_registered_technique_has_a_conformance_case():
    assert {t.kind for t in techniques()} == set(CASES)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_config_round_trips_and_refuses_bad_values(kind):
    entry = {t.kind: t for t in techniques()}[kind]
    make, (field, bad) = CASES[kind]
    config = make()
    assert isinstance(config, entry.config)
    assert entry.config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=f"{entry.config.__name__}.{field}") as raised:
        entry.config.from_dict({**config.to_dict(), field: bad})
    assert isinstance(raised.value, EdgeoptError)


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_apply_leaves_the_input_alone_and_the_result_exports_and_measures(kind, tmp_path):
    data = toy_classification(n=96, shape=(1, 8, 8))
    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    kwargs = {"teacher": _cnn()} if kind == "distill" else {}
    result, stats = eo.apply_with_stats(model, CASES[kind][0](), data=data, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result is not model
    # statistics come back beside the model, never on it
    assert stats and all(hasattr(s, "to_dict") for s in stats.values())
    assert not any(str(k).startswith("edgeopt") for k in (getattr(result, "meta", None) or {}))
    path = export_onnx(result, tmp_path / f"{kind}.onnx", data[0][0][None])
    m = measure(path, data, runs=2, warmup=0)
    assert m.accuracy is not None and m.size_bytes > 0


def test_duplicates_are_refused():
    entry = techniques()[0]
    with pytest.raises(RegistryError, match="already registered"):
        register(entry.config)(lambda model, config, **kw: model)

    class Nameless:
        kind = ""

    with pytest.raises(RegistryError, match="has no `kind`"):
        register(Nameless)(lambda model, config, **kw: model)


def test_loading_the_techniques_imports_no_onnx():
    # training and search trials never export: the exporter's translations load at first use
    import subprocess
    import sys

    code = ("import sys; from edgeopt.registry import load_techniques; load_techniques(); "
            "print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from edgeopt.export.onnx import translations

    assert torch.ops.edgeopt.quantize_dequantize.default in translations()
