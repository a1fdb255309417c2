import pytest
import torch

from edgeopt.quantization.config import Granularity
from edgeopt.quantization.primitives import (
    choose_qparams,
    dequantize,
    fake_quantize,
    integer_range,
    quantize,
    sqnr_db,
    weight_minmax,
)


def naive_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(min(max(round(qmin - lo / scale), qmin), qmax))


@pytest.mark.parametrize("bits,signed,narrow,expected", [
    (8, True, False, (-128, 127)), (8, True, True, (-127, 127)), (8, False, False, (0, 255)),
    (4, True, True, (-7, 7)), (2, False, False, (0, 3)),
])
def test_integer_range(bits, signed, narrow, expected):
    assert integer_range(bits, signed, narrow) == expected


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0)])
def test_asymmetric_qparams_match_naive_reference(lo, hi):
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), 0, 255, symmetric=False)
    ref_scale, ref_zp = naive_qparams(lo, hi, 0, 255)
    assert float(scale) == pytest.approx(ref_scale, rel=1e-6)
    assert int(zp) == ref_zp


def test_zero_is_exactly_representable():
    scale, zp = choose_qparams(torch.tensor(-0.37), torch.tensor(2.9), 0, 255, symmetric=False)
    q = quantize(torch.tensor(0.0), scale, zp, 0, 255)
    assert float(dequantize(q, scale, zp)) == 0.0


def test_symmetric_signed_per_channel():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    lo, hi = weight_minmax(w, Granularity.PER_CHANNEL)
    scale, zp = choose_qparams(lo, hi, -127, 127, symmetric=True)
    assert torch.allclose(scale, torch.tensor([2.0 / 127, 0.5 / 127]))
    assert (zp == 0).all()
    q = quantize(w, scale, zp, -127, 127)
    assert q[0, 1] == -127 and q[1, 0] == 127


def test_quantize_rounds_half_to_even_and_saturates():
    scale, zp = torch.tensor(1.0), torch.tensor(0)
    q = quantize(torch.tensor([0.5, 1.5, 2.5, 300.0, -5.0]), scale, zp, 0, 255)
    assert q.tolist() == [0, 2, 2, 255, 0]


def test_fake_quantize_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    x = torch.randn(1000)
    scale, zp = choose_qparams(x.min(), x.max(), 0, 255, symmetric=False)
    err = (fake_quantize(x, scale, zp, 0, 255) - x).abs().max()
    assert err <= scale / 2 + 1e-6
    assert sqnr_db(x, fake_quantize(x, scale, zp, 0, 255)) > 35


def test_fewer_bits_mean_lower_sqnr():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    results = []
    for bits in (8, 4, 2):
        qmin, qmax = integer_range(bits, True, True)
        lo, hi = weight_minmax(w, Granularity.PER_CHANNEL)
        scale, zp = choose_qparams(lo, hi, qmin, qmax, symmetric=True)
        results.append(sqnr_db(w, fake_quantize(w, scale, zp, qmin, qmax)))
    assert results[0] > results[1] > results[2]
