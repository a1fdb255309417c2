"""profile: hand-computed MACs and params, peak activation bounds, no mutation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.export.onnx import export_onnx
from edgeopt.profile import markdown_table, profile, profile_onnx, register_macs


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*10*10 outputs x 3*9 MACs = 21600
        self.bn = nn.BatchNorm2d(8)  # 800 (one per element)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # 800 x 9 = 7200
        self.fc = nn.Linear(8, 5)  # 5 x 8 = 40

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = x + self.dw(x)  # residual: x stays live across dw
        return self.fc(x.mean((2, 3)))


def test_macs_and_params_match_hand_computed_values():
    model = Mixed()
    result = profile(model, torch.randn(2, 3, 10, 10))  # batch 2: figures are per sample
    rows = {row.name: row for row in result.layers}
    assert rows["conv"].macs == 8 * 10 * 10 * 3 * 9
    assert rows["dw"].macs == 8 * 10 * 10 * 9
    assert rows["fc"].macs == 5 * 8
    assert rows["bn"].macs == 800
    assert rows["conv"].params == 8 * 3 * 9 + 8 and rows["dw"].params == 8 * 9
    assert rows["conv"].param_bytes == 4 * rows["conv"].params
    assert rows["conv"].output_shape == (2, 8, 10, 10)
    assert result.macs == 21600 + 800 + 7200 + 40
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.buffer_bytes > 0  # batch-norm running stats


def test_conv1d_macs():
    result = profile(nn.Conv1d(4, 6, 5), torch.randn(1, 4, 20))
    assert result.layers[0].macs == 6 * 16 * 4 * 5


def test_exact_peak_of_a_chain_in_trace_and_onnx(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 1, 8, 8)
    # conv: input 256 B + output 1024 B live; relu: conv output + relu output = 2048 B
    assert profile(model, x).peak_activation_bytes == 2048
    path = export_onnx(model, tmp_path / "chain.onnx", x)
    assert profile_onnx(path).peak_bytes == 2048


def test_peak_is_between_largest_activation_and_sum(tmp_path):
    model = Mixed().eval()
    x = torch.randn(1, 3, 10, 10)
    path = export_onnx(model, tmp_path / "mixed.onnx", x)
    for acts in (profile_onnx(path), profile(model, x).activations):
        assert acts.unknown_tensors == 0
        assert acts.largest_bytes == 8 * 10 * 10 * 4
        assert acts.largest_bytes <= acts.peak_bytes <= acts.total_bytes
        assert acts.peak_bytes >= 2 * acts.largest_bytes  # the residual keeps x alive
    from_graph = profile(model, x, onnx_path=path)
    assert from_graph.activation_source == "onnx"
    assert from_graph.peak_activation_bytes == profile_onnx(path).peak_bytes


def test_profiling_never_mutates_the_model():
    model = Mixed().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, torch.randn(4, 3, 10, 10))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(not m._forward_hooks for m in model.modules())


def test_markdown_table_and_to_dict():
    result = profile(Mixed(), torch.randn(1, 3, 10, 10))
    table = markdown_table(result)
    assert table.splitlines()[0] == "| layer | type | params | MACs | output |"
    assert "`conv` | Conv2d" in table and "**total**" in table
    assert len(markdown_table(result, max_rows=2).splitlines()) == 2 + 2 + 2  # rows, hidden, total
    d = result.to_dict()
    assert d["macs"] == result.macs and d["peak_activation_bytes"] == result.peak_activation_bytes


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def test_mac_table_is_extensible():
    register_macs(Square)(lambda module, inputs, output: output.numel())
    assert profile(Square(), torch.randn(3, 7)).macs == 7


def test_bad_input_type():
    with pytest.raises(TypeError, match="example_input"):
        profile(nn.Linear(2, 2), [1.0, 2.0])  # type: ignore[arg-type]


class Int8Linear(nn.Module):
    """Like a quantized layer: int8 weights stored as buffers, no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight_q", torch.ones(5, 8, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight_q.float() * self.scale[:, None]).t()


def test_weight_buffers_count_as_params_but_batch_norm_statistics_do_not():
    model = nn.Sequential(Int8Linear(), nn.BatchNorm1d(5))
    result = profile(model, torch.randn(2, 8))
    rows = {row.name: row for row in result.layers}
    assert rows["0"].params == 45 and rows["0"].param_bytes == 40 + 20
    assert rows["1"].params == 10  # BN weight and bias only
    assert result.params == 55 and result.buffer_bytes == 40 + 20 + 40 + 8


def test_int8_peak_counts_the_int8_tensors_the_runtime_holds(tmp_path):
    import edgeopt as eo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                          nn.Flatten(), nn.Linear(144, 10)).eval()
    x = torch.randn(8, 1, 12, 12)
    quantized = eo.apply(model, eo.QuantConfig(), data=[x])
    fp32 = profile_onnx(export_onnx(model, tmp_path / "a.onnx", x[:1]))
    int8 = profile_onnx(export_onnx(quantized, tmp_path / "b.onnx", x[:1]))
    activation = 16 * 12 * 12
    # fp32: a conv output and its ReLU output (4 bytes each) are live together; int8: the
    # fused QLinearConv (+ReLU) reads one uint8 tensor and writes the next
    assert fp32.peak_bytes == 2 * 4 * activation
    assert int8.peak_bytes == 2 * activation
