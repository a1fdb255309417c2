import numpy as np
import pytest
import torch
import torch.nn as nn
from qhelpers import agreement, run_onnx

import edgeopt as eo
from edgeopt.quantization.config import NumberFormat
from edgeopt.quantization.formats import cast_round_trip, round_mantissa
from edgeopt.quantization.modules import QATWeightLayer
from edgeopt.quantization.primitives import quantize_stochastic
from edgeopt.quantization.simulated import FloatFormatLayer


def values(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp2(torch.randint(-12, 12, (n,), generator=g))


@pytest.mark.parametrize("fmt,dtype", [
    ("fp16", torch.float16), ("bf16", torch.bfloat16),
    ("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2),
])
def test_cast_matches_the_torch_dtype_round_trip(fmt, dtype):
    x = values()
    limit = float(torch.finfo(dtype).max)
    reference = x.clamp(-limit, limit).to(dtype).to(torch.float32)  # naive reference
    assert torch.equal(cast_round_trip(x, NumberFormat(fmt)), reference)


def test_fp8_saturates_instead_of_overflowing():
    x = torch.tensor([1000.0, -1e6, 448.0, 0.0])
    assert cast_round_trip(x, NumberFormat.FP8_E4M3).tolist() == [448.0, -448.0, 448.0, 0.0]
    assert float(cast_round_trip(torch.tensor([1e6]), NumberFormat.FP8_E5M2)) == 57344.0


def naive_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even on the bit pattern: keep 10 of fp32's 23 fraction bits."""
    bits = x.numpy().view(np.uint32).astype(np.uint64)
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0xFFF + lsb) & ~np.uint64(0x1FFF)).astype(np.uint32)
    return torch.from_numpy(rounded.view(np.float32))


def test_tf32_veltkamp_rounding_matches_bit_rounding():
    x = values(50000, seed=1)
    assert torch.equal(round_mantissa(x, 10), naive_tf32(x))
    assert torch.equal(round_mantissa(x, 7), x.to(torch.bfloat16).float())  # bf16 too


def test_stochastic_rounding_is_unbiased_and_rounds_to_a_neighbour():
    x = torch.full((20000,), 2.3)
    g = torch.Generator().manual_seed(0)
    q = quantize_stochastic(x, torch.tensor(1.0), torch.tensor(0), -8, 7, g)
    assert set(q.unique().tolist()) == {2, 3}
    assert abs(float(q.float().mean()) - 2.3) < 0.02


def test_qat_stochastic_rounding_only_while_training():
    layer = QATWeightLayer(nn.Linear(32, 16), eo.QuantSpec(bits=4), stochastic=True)
    layer.train()
    assert not torch.equal(layer.fake_weight(), layer.fake_weight())
    layer.eval()
    assert torch.equal(layer.fake_weight(), layer.fake_weight())


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "bf16", "tf32"])
def test_float_formats_simulated_equals_deployed(fmt, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.randn(200, 1, 8, 8)
    q, q_stats = eo.apply_with_stats(model, eo.QuantConfig(weights=eo.QuantSpec(dtype=fmt)), data=[x[:64]])
    assert isinstance(q.get_submodule("1"), FloatFormatLayer)
    deployed = run_onnx(eo.export_onnx(q, tmp_path / "f.onnx", x[:1]), x)
    simulated = q(x).detach().numpy()
    assert agreement(deployed, simulated) >= 0.995
    assert np.abs(deployed - simulated).max() < 1e-4 * np.abs(simulated).max() + 1e-5
    rows = q_stats["quant"].layers
    assert [r["format"] for r in rows] == [fmt, fmt] and "artifact" in rows[0]
    if fmt == "fp8_e4m3":  # 8-bit weights: coarser than bf16, still close
        assert eo.quantization.primitives.sqnr_db(model(x), q(x)) > 20


def test_float_activation_spec_ignores_granularity():
    import edgeopt as eo

    # QuantSpec defaults to per_channel; granularity means nothing for a float format
    config = eo.QuantConfig(weights=eo.QuantSpec(dtype="fp16"),
                            activations=eo.QuantSpec(dtype="fp16"))
    assert config.activations.dtype.value == "fp16"
    with pytest.raises(ValueError, match="activations.granularity"):
        eo.QuantConfig(activations=eo.QuantSpec(bits=8))  # integer: per-tensor only
