import torch
import torch.nn as nn
from qhelpers import agreement, run_onnx

import edgeopt as eo
from edgeopt.quantization.awq import awq_factors, search_scale
from edgeopt.quantization.mixed import simulate_weight
from edgeopt.quantization.primitives import sqnr_db
from edgeopt.runtime.inspect import census

GROUP = eo.QuantSpec(bits=3, granularity="per_group", group_size=16)


def salient_inputs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 64, generator=g)
    x[:, :4] *= 20.0  # a few input channels carry most of the activation
    return x


def test_factors_are_normalized_powers_of_the_activation_mean():
    mean = torch.tensor([4.0, 1.0, 0.25])
    s = awq_factors(mean, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 1.0, 0.5]))
    assert torch.equal(awq_factors(mean, 0.0), torch.ones(3))


def test_group_simulation_matches_a_naive_per_group_reference():
    w = torch.randn(8, 32)
    q = simulate_weight(w, GROUP)
    for row in range(8):
        for start in (0, 16):
            block = w[row, start:start + 16]
            step = block.abs().max() / 3  # 3 bits, narrow symmetric range [-3, 3]
            expected = torch.clamp(torch.round(block / step), -3, 3) * step
            assert torch.allclose(q[row, start:start + 16], expected, atol=1e-6)


def test_search_protects_salient_channels_and_never_loses_to_rtn():
    x = salient_inputs()
    w = torch.randn(32, 64) * 0.1
    s, alpha, plain, best = search_scale(x, [w], GROUP)
    assert best <= plain and alpha > 0 and best < 0.8 * plain
    assert float(s[:4].mean()) > float(s[4:].mean())


def test_awq_int4_weight_only_beats_rtn_and_deploys(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(),
                          nn.Linear(128, 10)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 20.0
    calib, x = torch.randn(256, 64), torch.randn(256, 64)
    spec = eo.QuantSpec(bits=4, granularity="per_group", group_size=16)
    base = eo.QuantConfig(method="weight_only", activations=None, weights=spec)
    rtn = eo.apply(model, base, data=[calib])
    awq, awq_stats = eo.apply_with_stats(model, eo.QuantConfig(method="weight_only", activations=None, weights=spec,
                                         awq=True), data=[calib])
    with torch.no_grad():
        assert sqnr_db(model(x), awq(x)) > sqnr_db(model(x), rtn(x)) + 1
    stats = awq_stats["quant"]
    # layer "1" reads the LayerNorm (folded there); layer "3" reads GELU's output (a Mul)
    assert stats.methods["awq"] == {"layers": 2, "folded": 1}
    path = eo.export_onnx(awq, tmp_path / "awq.onnx", x[:1])
    assert census(path)["all_ops"].get("MatMulNBits", 0) == 2
    assert agreement(run_onnx(path, x), awq(x)) >= 0.97
