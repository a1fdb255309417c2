"""Generated C on the host compiler: bit-exact with the integer reference on every zoo model."""

import shutil

import numpy as np
import pytest
from deploy_models import POW2, SHAPES, inputs, quantized

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.c import build_c, run_host
from edgeopt.deploy.c.emit import pack_int4
from edgeopt.deploy.c.plan import greedy_by_size, plan_memory
from edgeopt.deploy.lower import lower_onnx

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                               reason="the host self-test needs gcc and make (apt-get install gcc make)")


def _build(name, tmp_path, *specs, n=6):
    _, path = quantized(name, *specs)
    graph = lower_onnx(path, calibration=inputs(name, 16, seed=1))
    x = reference.quantize_input(graph, inputs(name, n, seed=4).numpy())
    return graph, build_c(graph, tmp_path / "c", test_inputs=x)


@needs_gcc
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_c_is_bit_exact_with_the_reference(name, tmp_path):
    graph, info = _build(name, tmp_path)
    assert run_host(info.out_dir).strip() == "edgeopt selftest: 6/6 bit-exact"
    model_c = (info.out_dir / "model.c").read_text()
    assert "malloc" not in model_c and "stdio" not in model_c  # no heap, no I/O in the model itself
    header = (info.out_dir / "model.h").read_text()
    for macro in ("INPUT_SCALE", "INPUT_ZERO_POINT", "OUTPUT_SCALE", "OUTPUT_ZERO_POINT", "INPUT_SIZE",
                  "OUTPUT_SIZE"):
        assert f"#define EDGEOPT_{macro} " in header
    assert "int edgeopt_model_invoke(const int8_t *input, int8_t *output);" in header
    # the plan never needs more than every activation side by side, never less than what lives at once
    activations = sum(t.size for t in graph.tensors.values() if not t.is_constant)
    assert info.peak_live_bytes <= info.ram_bytes < activations
    assert info.macs > 0 and len(info.layers) == len(graph.ops)


@needs_gcc
def test_4bit_weights_are_packed_two_per_byte_and_stay_exact(tmp_path):
    graph, info = _build("lenet5", tmp_path, eo.QuantSpec(bits=4), None)
    weights = [graph.tensors[op.inputs[1]] for op in graph.ops if op.kind in ("conv2d", "fully_connected")]
    assert weights and all(w.dtype == "int4" for w in weights)
    assert info.weight_bytes == sum((w.size + 1) // 2 for w in weights)
    assert run_host(info.out_dir).strip() == "edgeopt selftest: 6/6 bit-exact"


@needs_gcc
def test_power_of_two_mode_in_c_is_bit_exact(tmp_path):
    graph, info = _build("resnet8", tmp_path, *POW2)
    assert info.pow2 and "EDGEOPT_POW2_REQUANTIZATION 1" in (info.out_dir / "model.h").read_text()
    assert "_m[" not in (info.out_dir / "model.c").read_text()  # shifts only, no multiplier tables
    assert run_host(info.out_dir).strip() == "edgeopt selftest: 6/6 bit-exact"


def test_pack_int4_low_nibble_first():
    packed = pack_int4(np.array([1, -1, -8, 7, 3]))
    assert packed.tolist() == [0xF1, 0x78, 0x03]


def test_greedy_planner_reuses_memory_of_dead_tensors():
    sizes = {"a": 100, "b": 48, "c": 100, "d": 10}
    lifetimes = {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (0, 3)}
    offsets, arena = greedy_by_size(sizes, lifetimes)
    assert offsets["a"] == offsets["c"] == 0  # c reuses a's bytes
    assert offsets["b"] == 100 and offsets["d"] == 148 and arena == 160  # a|c, b, d; 4-byte aligned
    for x in sizes:
        for y in sizes:
            overlap_time = lifetimes[x][0] <= lifetimes[y][1] and lifetimes[y][0] <= lifetimes[x][1]
            overlap_space = offsets[x] < offsets[y] + sizes[y] and offsets[y] < offsets[x] + sizes[x]
            assert x == y or not (overlap_time and overlap_space)


def test_residual_adds_write_in_place():
    _, path = quantized("resnet8")
    graph = lower_onnx(path, calibration=inputs("resnet8", 4))
    plan = plan_memory(graph)
    adds = [op for op in graph.ops if op.kind == "add"]
    assert adds and all(plan.storage[op.outputs[0]] in {plan.storage[n] for n in op.inputs} for op in adds)


@needs_gcc
def test_export_c_writes_a_buildable_folder(tmp_path):
    q, _ = quantized("lenet300")
    info = eo.export_c(q, tmp_path / "out", inputs("lenet300", 4), target="host")
    assert isinstance(info, eo.CExport) and info.test_inputs == 4
    assert {"model.c", "model.h", "Makefile", "selftest.c", "edgeopt_kernels.c"} <= set(info.files)
    assert "4/4 bit-exact" in run_host(info.out_dir)
    with pytest.raises(eo.errors.ConfigError, match="export_c.target"):
        eo.export_c(q, tmp_path / "bad", inputs("lenet300", 1), target="z80")


def test_export_c_for_cortex_m4_takes_flash_and_ram_from_the_image(tmp_path):
    from edgeopt.deploy import mcu

    if mcu.toolchain_missing():
        pytest.skip(mcu.toolchain_missing())
    q, _ = quantized("lenet300")
    info = eo.export_c(q, tmp_path / "m4", inputs("lenet300", 2), target="cortex-m4")
    assert info.image is not None and info.flash_bytes == info.image["flash_bytes"]
    assert info.flash_bytes > info.weight_bytes  # code and tables on top of the weights
    assert info.ram_bytes >= info.arena_bytes > 0


def test_the_input_lives_in_the_arena_and_its_bytes_are_reused():
    _, path = quantized("lenet5")
    graph = lower_onnx(path, calibration=inputs("lenet5", 4))
    plan = plan_memory(graph)
    buf = plan.storage[graph.inputs[0]]
    start, end = plan.offsets[buf], plan.offsets[buf] + plan.sizes[buf]
    assert plan.lifetimes[buf][0] == 0 and plan.sizes[buf] == graph.tensors[graph.inputs[0]].size
    later = [b for b, (lo, _) in plan.lifetimes.items() if lo > plan.lifetimes[buf][1]]
    assert any(plan.offsets[b] < end and start < plan.offsets[b] + plan.sizes[b] for b in later)  # reused
    assert plan.arena_bytes == plan.peak_live_bytes()


def test_a_size_the_kernels_int16_fields_cannot_hold_is_refused(tmp_path):
    import torch

    from edgeopt.errors import ExportError

    torch.manual_seed(0)
    # 8 x 64 x 64 = 32768 inputs to the fully connected layer: one more than int16_t holds
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 64 * 64, 2)).eval()
    x = torch.randn(4, 1, 64, 64)
    q = eo.apply(model, eo.QuantConfig(), data=[x])
    with pytest.raises(ExportError, match="32767"):
        eo.export_c(q, tmp_path / "c", x[:1])
    assert not (tmp_path / "c").exists()
