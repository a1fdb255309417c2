import pytest
import torch
import torch.nn.functional as F
from qhelpers import correlated_layer, images, settle_batch_norm

import edgeopt as eo
from edgeopt.quantization.gptq import gptq, hessian, im2col, patches
from edgeopt.quantization.reconstruct import holdout
from edgeopt.quantization.rows import LayerRows


def test_gptq_lowers_layer_output_error_versus_rtn():
    w, scale, zero, x, y = correlated_layer()
    q = gptq(w, hessian(x), scale, zero, -7, 7, block_size=8)
    rtn = torch.clamp(torch.round(w / scale), -7, 7)
    error = (F.linear(x, q * scale) - y).pow(2).mean()
    error_rtn = (F.linear(x, rtn * scale) - y).pow(2).mean()
    assert float(error) < 0.7 * float(error_rtn)
    assert int(q.abs().max()) <= 7 and torch.equal(q, q.round())


def test_gptq_with_white_inputs_is_round_to_nearest():
    # H = I: no column's error can be compensated by another, so GPTQ reduces to RTN
    w, scale, zero, _, _ = correlated_layer()
    q = gptq(w, torch.eye(w.shape[1]), scale, zero, -7, 7, damping=0.0)
    assert torch.equal(q, torch.clamp(torch.round(w / scale), -7, 7))


def test_im2col_times_flattened_weight_is_the_convolution():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 7, 6, generator=g), torch.randn(5, 3, 3, 2, generator=g)
    params = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 1}
    rows = im2col(x, w.shape, params)
    out = F.conv2d(x, w, **params)
    via_rows = (rows @ w.reshape(5, -1).T).reshape(2, -1, 5).permute(0, 2, 1)
    assert torch.allclose(via_rows.reshape(out.shape), out, atol=1e-5)
    x1, w1 = torch.randn(2, 3, 9, generator=g), torch.randn(4, 3, 3, generator=g)
    p1 = {"stride": (1,), "padding": (1,), "dilation": (2,), "groups": 1}
    out1 = F.conv1d(x1, w1, **p1)
    rows1 = im2col(x1, w1.shape, p1)
    assert torch.allclose((rows1 @ w1.reshape(4, -1).T).reshape(2, -1, 4).permute(0, 2, 1),
                          out1, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("x_shape,w_shape,params", [
    ((2, 3, 7, 6), (5, 3, 3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    ((2, 3, 9, 9), (4, 3, 3, 3), {"stride": (1, 1), "padding": "same", "dilation": (2, 1)}),
    ((2, 3, 8, 8), (4, 3, 4, 4), {"stride": (1, 1), "padding": "same", "dilation": (1, 1)}),
    ((2, 3, 9), (4, 3, 3), {"stride": (2,), "padding": (1,), "dilation": (2,)}),
    ((2, 3, 9), (4, 3, 3), {"stride": (1,), "padding": "valid", "dilation": (1,)}),
])
def test_patches_are_the_im2col_rows_at_the_picked_positions(x_shape, w_shape, params):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(*x_shape, generator=g), torch.randn(*w_shape, generator=g)
    params = {**params, "groups": 1}
    rows = im2col(x, w.shape, params)
    index = torch.randperm(rows.shape[0], generator=g)[:9]
    assert torch.equal(patches(x, w.shape, params, index), rows[index])
    out = (F.conv2d if len(x_shape) == 4 else F.conv1d)(x, w, **params)
    assert torch.allclose(rows @ w.reshape(w.shape[0], -1).T,
                          out.movedim(1, -1).reshape(-1, w.shape[0]), atol=1e-5)


def test_patches_of_a_depthwise_conv_hold_every_channel_in_weight_order():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 6, 7, 7, generator=g), torch.randn(6, 1, 3, 3, generator=g)
    params = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 6}
    out = F.conv2d(x, w, **params).movedim(1, -1).reshape(-1, 6)
    index = torch.arange(0, out.shape[0], 3)
    rows = patches(x, w.shape, params, index).reshape(-1, 6, 9)
    assert torch.allclose((rows * w.reshape(6, 9)).sum(-1), out[index], atol=1e-5)


def _small_cnn() -> torch.nn.Module:
    """conv-ReLU, conv-ReLU, then a Linear over 256 features: with 48 calibration samples its
    Hessian is singular."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    return settle_batch_norm(model, images(256, seed=99))


def _layer_errors(model, quantized, names, x) -> dict[str, float]:
    """Each layer's output error on `x`: the quantized model's against the float model's, after
    the ReLU where one follows (the quantized layer's output is already clamped)."""
    got = {}

    def keep(tag, name):
        return lambda module, args, out: got.__setitem__((tag, name), out.detach())

    handles = [quantized.get_submodule(n).register_forward_hook(keep("q", n)) for n in names]
    handles += [model.get_submodule(f).register_forward_hook(keep("f", n))
                for n, f in names.items()]
    with torch.no_grad():
        model(x), quantized(x)
    for handle in handles:
        handle.remove()
    return {n: float((got["q", n] - got["f", n]).pow(2).mean()) for n in names}


def test_gptq_on_a_small_cnn_is_no_worse_than_nearest_on_unseen_inputs():
    model, calib, unseen = _small_cnn(), images(48, seed=1), images(256, seed=2)
    w4 = eo.QuantSpec(bits=4)
    nearest = eo.apply(model, eo.QuantConfig(weights=w4), data=[calib])
    refined, stats = eo.apply_with_stats(model, eo.QuantConfig(weights=w4, rounding="gptq"),
                                         data=[calib])
    # quantized layer -> the float module whose output it stands for (BN folded; ReLU after)
    names = {"0": "2", "3": "5", "7": "7"}
    near, gptq_ = (_layer_errors(model, q, names, unseen) for q in (nearest, refined))
    assert all(gptq_[n] <= near[n] * 1.01 for n in names), (gptq_, near)
    assert gptq_["0"] < 0.9 * near["0"]  # where its Hessian is sound, GPTQ does help
    notes = {r["name"]: r for r in stats["quant"].layers}
    assert all(isinstance(notes[n]["gptq_kept"], bool) for n in names)  # judged on held-out rows


def test_holdout_keeps_whole_samples_apart():
    rows = LayerRows(torch.arange(24.0).reshape(12, 2), torch.arange(12.0).reshape(12, 1), 3)
    fit, held = holdout(rows)  # 4 samples of 3 rows: 3 to fit, the last to check
    assert fit.inputs.shape == (9, 2) and torch.equal(held.target.flatten(), torch.tensor([9., 10, 11]))
    one = LayerRows(rows.inputs[:3], rows.target[:3], 3)
    assert holdout(one)[0] is one and holdout(one)[1] is one
