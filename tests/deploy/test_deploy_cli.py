"""`edgeopt deploy` on a small run folder: an int8 stage built for the emulated Cortex-M4, the
same stage in ONNX Runtime, and refusals (one `error:` line, exit 2, nothing written)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgeopt as eo
from edgeopt.cli import main
from edgeopt.deploy import mcu

needs_toolchain = pytest.mark.skipif(mcu.toolchain_missing() is not None,
                                     reason=mcu.toolchain_missing() or "")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What `edgeopt optimize` leaves (metrics.json, the stages' ONNX, test_inputs.npz) for a
    LeNet-5 on 8x8 inputs: a float baseline and an int8 stage."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    net = eo.zoo.create("lenet5", (1, 8, 8), 10).eval()
    calib = torch.randn(64, 1, 8, 8)
    eo.export_onnx(net, folder / "baseline.onnx", calib[:1])
    eo.export_onnx(eo.apply(net, eo.QuantConfig(), data=[calib]), folder / "int8.onnx", calib[:1])
    x = torch.randn(6, 1, 8, 8).numpy()
    np.savez_compressed(folder / "test_inputs.npz", x=x, y=np.arange(6) % 10)
    stages = [{"name": n, "onnx": f"{n}.onnx", "peak_activation_bytes": 500}
              for n in ("baseline", "int8")]
    (folder / "metrics.json").write_text(json.dumps({"stages": stages, "recipe": {}}))
    return folder


def _deploy(run_dir, out, stage="int8", target="cortex-m4", *extra):
    return CliRunner().invoke(main, ["deploy", str(run_dir), "--stage", stage, "--target",
                                     target, "--out", str(out), *extra])


@needs_toolchain
def test_int8_stage_on_cortex_m4(run_dir, tmp_path):
    result = _deploy(run_dir, tmp_path / "m4", "int8", "cortex-m4", "--inputs", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m4" / "deploy.json").read_text())
    assert report["target"] == "cortex-m4" and report["inputs"] == 4
    assert report["bit_exact_with_reference"] is True
    assert report["top1_agreement_with_onnx"] == 1.0
    # the image holds the weights the C export counted, plus code and the 4 inputs
    assert report["flash_bytes"] > report["weights_flash_bytes"] > 2000
    assert report["ram_bytes"] >= report["arena_bytes"] > 0 and report["fits"] is True
    assert report["instructions_per_inference"] > 10_000
    # latency at the target's assumed clock; a search's per-layer prediction for this graph
    assert report["latency_ms"] == pytest.approx(report["instructions_per_inference"] / 168e3)
    predicted, measured = report["instructions_predicted"], report["instructions_per_inference"]
    assert abs(predicted - measured) < 0.15 * measured
    layers = report["layers"]
    assert [layer["kind"] for layer in layers][0] == "conv2d"
    assert 0.5 * report["instructions_per_inference"] < sum(
        layer["instructions"] for layer in layers) <= report["instructions_per_inference"]
    assert (tmp_path / "m4" / "build" / "model.elf").is_file()


def test_x86_ort_measures_the_onnx_file(run_dir, tmp_path):
    result = _deploy(run_dir, tmp_path / "x86", "baseline", "x86-ort")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "x86" / "deploy.json").read_text())
    assert report["target"] == "x86-ort" and report["latency_ms"] > 0
    assert report["flash_bytes"] == (run_dir / "baseline.onnx").stat().st_size
    assert report["ram_bytes"] == 500 and report["instructions_per_inference"] is None


@pytest.mark.parametrize(("stage", "target", "expected"), [
    ("int9", "cortex-m4", "stage must be one of baseline, int8"),
    ("int8", "esp32", "target must be one of cortex-m4, cortex-m7, x86-ort"),
    ("baseline", "cortex-m4", "stage 'baseline' is a float model"),
])
def test_refusals(run_dir, tmp_path, stage, target, expected):
    result = _deploy(run_dir, tmp_path / "out", stage, target)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_run_folder(tmp_path):
    result = _deploy(tmp_path / "nope", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_stage_fit_estimates_from_the_lowered_graph(run_dir):
    from edgeopt.deploy.budget import stage_fit
    from edgeopt.deploy.targets import get_target

    m4 = get_target("cortex-m4")
    fit = stage_fit(run_dir / "int8.onnx", m4)
    assert fit["deployable"] and fit["fits"] is True
    # LeNet-5 at 8x8: 6*25 + 16*150 + 64*120 + 120*84 + 84*10 int8 weights, int32 biases
    assert 20_000 < fit["flash_bytes"] < 25_000 and 64 + 10 < fit["ram_bytes"] < 2_000
    assert stage_fit(run_dir / "baseline.onnx", m4)["deployable"] is False
    tiny = dataclasses.replace(m4, flash_bytes=10_000)
    assert stage_fit(run_dir / "int8.onnx", tiny)["flash_fits"] is False
