import copy

import torch
import torch.fx as fx
import torch.nn as nn
from qhelpers import ds_cnn, images

from edgeopt.quantization import graph as qgraph
from edgeopt.quantization.equalization import (
    absorb_biases,
    equalization_scales,
    equalize,
    find_pairs,
    input_ranges,
    output_ranges,
)
from edgeopt.quantization.modules import ChannelClamp


def folded(model: nn.Module) -> tuple[fx.GraphModule, dict]:
    stats: dict = {}
    gm = qgraph.trace(copy.deepcopy(model))
    qgraph.fold_batch_norm(gm, stats)
    return gm, stats


def test_scales_match_naive_reference():
    r1, r2 = torch.tensor([4.0, 1.0, 0.0, 9.0]), torch.tensor([1.0, 4.0, 2.0, 1.0])
    s = equalization_scales(r1, r2)
    for i in range(4):
        if r1[i] == 0:
            assert s[i] == 1.0
        else:  # both layers end with range sqrt(r1 * r2)
            expected = (float(r1[i]) * float(r2[i])) ** 0.5
            assert abs(float(r1[i] / s[i]) - expected) < 1e-6
            assert abs(float(r2[i] * s[i]) - expected) < 1e-6


def test_cle_preserves_the_float_function_and_equalizes_ranges():
    gm, stats = folded(ds_cnn())
    names = qgraph.weight_layer_names(gm, ())
    x = images(64, seed=3)
    before = gm(x)
    spread_before = _spread(gm, "3")
    pairs, scales, sweeps = equalize(gm, names, 50, stats)
    assert [(p.first, p.second) for p in pairs] == [("0", "3"), ("3", "6")]
    assert torch.allclose(gm(x), before, atol=1e-5, rtol=1e-5)
    # depthwise-separable block: the depthwise layer's channel ranges are pulled together
    assert _spread(gm, "3") < spread_before / 5
    r1, r2 = output_ranges(gm.get_submodule("3")), input_ranges(gm.get_submodule("6"))
    assert torch.allclose(r1, r2, rtol=0.05)
    assert 1 <= sweeps <= 50 and set(scales) == {"0", "3"}


def _spread(gm: fx.GraphModule, name: str) -> float:
    ranges = output_ranges(gm.get_submodule(name))
    return float(ranges.max() / ranges.min())


def test_relu6_becomes_a_per_channel_clamp_that_keeps_the_function():
    gm, stats = folded(ds_cnn(relu6=True))
    x = images(64, seed=4) * 3  # large inputs: the clip at 6 is active
    before = gm(x)
    equalize(gm, qgraph.weight_layer_names(gm, ()), 20, stats)
    clamps = [m for m in gm.modules() if isinstance(m, ChannelClamp)]
    assert len(clamps) == 1 and not torch.allclose(clamps[0].upper, torch.full((8,), 6.0))
    assert torch.allclose(gm(x), before, atol=1e-5, rtol=1e-5)


def test_pairs_stop_at_branches_and_flatten():
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4 * 36, 2)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.fc(torch.flatten(self.b(y) + self.c(y), 1))

    gm = fx.symbolic_trace(Branch())
    assert find_pairs(gm, qgraph.weight_layer_names(gm, ())) == []


def test_bias_absorption_is_exact_where_the_relu_never_cuts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(10.0)  # pre-activations around 10: the ReLU never clips
    gm = fx.symbolic_trace(model)
    x = torch.randn(256, 4) * 0.5
    with torch.no_grad():
        pre = model[0](x)
    stats = {"0": (pre.mean(0), 2 * pre.std(0))}  # c = mean - 6 std: below every sample
    pairs = find_pairs(gm, ["0", "2"])
    before = gm(x)
    absorbed = absorb_biases(gm, pairs, stats)
    assert absorbed["0"] > 5.0
    with torch.no_grad():
        assert float(gm.get_submodule("0").bias.max()) < 10.0 - 5.0
        assert torch.allclose(gm(x), before, atol=1e-4)
        # the activation range the next quantizer must cover shrank
        assert float(torch.relu(gm.get_submodule("0")(x)).max()) < float(pre.max()) / 2


def test_relu6_to_relu_keeps_a_plain_relu_for_the_integer_kernels():
    gm, stats = folded(ds_cnn(relu6=True))
    equalize(gm, qgraph.weight_layer_names(gm, ()), 20, stats, relu6_to_relu=True)
    assert not any(isinstance(m, (ChannelClamp, nn.ReLU6)) for m in gm.modules())
    assert sum(qgraph.is_relu(gm, n) for n in gm.graph.nodes) == 3


def test_relu6_with_calibration_inputs_stays_one_clip_the_runtime_fuses(tmp_path):
    import edgeopt as eo
    from edgeopt.runtime.inspect import census

    gm, stats = folded(ds_cnn(relu6=True))
    x = images(64, seed=4) * 3  # large inputs: some channels reach the clip at 6
    before = gm(x)
    equalize(gm, qgraph.weight_layer_names(gm, ()), 20, stats, batches=[x])
    clips = [m for m in gm.modules() if isinstance(m, nn.Hardtanh)]
    assert not any(isinstance(m, ChannelClamp) for m in gm.modules()) and len(clips) == 1
    assert clips[0].min_val == 0.0 and clips[0].max_val != 6.0
    assert torch.allclose(gm(x), before, atol=1e-4, rtol=1e-4)  # exact on the measured inputs
    # quantized and exported, every convolution runs on the integer kernels
    q = eo.apply(ds_cnn(relu6=True), eo.QuantConfig(equalization=True), data=[x])
    path = eo.export_onnx(q, tmp_path / "cle.onnx", x[:1])
    assert census(path)["all_ops"].get("QLinearConv", 0) == 3
