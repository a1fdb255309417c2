import torch
import torch.nn as nn
from qhelpers import agreement, run_onnx

import edgeopt as eo
from edgeopt.quantization.modules import QuantizedWeightLayer
from edgeopt.quantization.nonuniform import kmeans_codebook, log2_magnitudes, log2_quantize
from edgeopt.quantization.simulated import CodebookLayer
from edgeopt.runtime.inspect import census


def test_log2_levels_are_signed_powers_of_two_and_nearest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 50, generator=g)
    levels, scale = log2_quantize(w, 4)
    allowed = {0.0} | {s * 2.0**k for k in range(log2_magnitudes(4)) for s in (1, -1)}
    assert set(levels.unique().tolist()) <= allowed
    # naive reference: with the chosen scale, each value takes the nearest allowed level
    grid = torch.tensor(sorted(allowed))
    for row in range(8):
        candidates = grid * scale[row]
        nearest = candidates[(w[row, :, None] - candidates).abs().argmin(dim=1)]
        assert torch.allclose(levels[row] * scale[row], nearest, atol=1e-6)


def test_kmeans_matches_a_naive_lloyd_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(500, generator=g) * 0.1 + c for c in (-2.0, 0.0, 1.0, 3.0)])
    codebook, index = kmeans_codebook(x, 4)
    assert torch.allclose(codebook, torch.tensor([-2.0, 0.0, 1.0, 3.0]), atol=0.05)
    inertia = float((x - codebook[index]).pow(2).sum())
    from sklearn.cluster import KMeans

    reference = KMeans(4, n_init=4, random_state=0).fit(x.numpy().reshape(-1, 1)).inertia_
    assert inertia <= reference * 1.01


def test_log2_weights_run_on_integer_kernels_and_kmeans_stores_a_codebook(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 64, 5)).eval()
    x = torch.randn(200, 1, 8, 8)
    q = eo.apply(model, eo.QuantConfig(weights=eo.QuantSpec(bits=4, levels="log2")), data=[x])
    layer = q.get_submodule("0")
    assert isinstance(layer, QuantizedWeightLayer) and layer.weight_q.dtype == torch.int8
    path = eo.export_onnx(q, tmp_path / "log2.onnx", x[:1])
    assert census(path)["all_ops"].get("QLinearConv", 0) == 1
    assert agreement(run_onnx(path, x), q(x)) >= 0.995

    k, k_stats = eo.apply_with_stats(model, eo.QuantConfig(method="weight_only", activations=None,
                                       weights=eo.QuantSpec(bits=4, levels="kmeans")))
    assert isinstance(k.get_submodule("3"), CodebookLayer)
    rows = {r["name"]: r for r in k_stats["quant"].layers}
    assert rows["3"]["stored_bytes"] < 4 * 8 * 64 * 5 / 7  # 4-bit codes + 16 floats
    assert rows["3"]["levels"] == "kmeans" and rows["3"]["weight_sqnr_db"] > 15
    assert agreement(run_onnx(eo.export_onnx(k, tmp_path / "k.onnx", x[:1]), x), k(x)) >= 0.995
