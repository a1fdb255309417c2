import copy

import torch
import torch.fx as fx
import torch.nn as nn
from qhelpers import agreement, run_onnx

import edgeopt as eo
from edgeopt.quantization.modules import ChannelScale
from edgeopt.quantization.primitives import sqnr_db
from edgeopt.quantization.reconstruct import capture
from edgeopt.quantization.smoothquant import smooth, smoothing_factors


class Block(nn.Module):
    """Pre-LN transformer MLP block with outlier channels after the LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(32)
        self.up = nn.Linear(32, 64)
        self.gate = nn.Linear(32, 64)
        self.act = nn.GELU()
        self.down = nn.Linear(64, 32)
        self.head = nn.Linear(32, 6)
        with torch.no_grad():
            self.norm.weight[:3] = 40.0  # activation outliers, as trained transformers have

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.down(self.act(self.up(h)) * self.gate(h))
        return self.head(y)


def test_smoothing_factors_match_the_formula():
    act, weight = torch.tensor([8.0, 1.0, 0.0]), torch.tensor([2.0, 4.0, 1.0])
    s = smoothing_factors(act, weight, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5, 1.0]))


def test_smoothing_keeps_the_float_function_and_flattens_activations():
    model = Block().eval()
    gm = fx.symbolic_trace(copy.deepcopy(model))
    x = [torch.randn(160, 32)]
    before = gm(x[0])
    act_before = capture(gm, "up", x).abs().amax(dim=0)
    absmax = {n: capture(gm, n, x).abs().amax(0) for n in ("up", "down", "head")}
    notes = smooth(gm, ["up", "gate", "down", "head"], absmax, 0.5)
    assert torch.allclose(gm(x[0]), before, atol=1e-4, rtol=1e-4)
    # up/gate: into the LayerNorm; head: into down's rows; down (after GELU * gate): a Mul
    assert notes["up"]["smoothquant_folded"] and notes["head"]["smoothquant_folded"]
    assert not notes["down"]["smoothquant_folded"]
    assert sum(isinstance(m, ChannelScale) for m in gm.modules()) == 1
    act_after = capture(gm, "up", x).abs().amax(dim=0)
    assert float(act_after.max() / act_after.median()) < float(
        act_before.max() / act_before.median()) / 3


def test_w8a8_with_smoothquant_is_closer_to_float_and_deploys(tmp_path):
    model = Block().eval()
    torch.manual_seed(1)
    calib, x = torch.randn(256, 32), torch.randn(512, 32)
    plain = eo.apply(model, eo.QuantConfig(), data=[calib])
    smoothed, smoothed_stats = eo.apply_with_stats(model, eo.QuantConfig(smoothquant=True), data=[calib])
    with torch.no_grad():
        reference = model(x)
    with torch.no_grad():
        assert sqnr_db(reference, smoothed(x)) > sqnr_db(reference, plain(x)) + 3
    path = eo.export_onnx(smoothed, tmp_path / "sq.onnx", x[:1])
    assert agreement(run_onnx(path, x), smoothed(x)) >= 0.995
    assert smoothed_stats["quant"].methods["smoothquant"]["folded"] == 3
