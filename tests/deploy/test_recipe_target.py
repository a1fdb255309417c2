"""The recipe key `target:`: validated up front, rendered in summary.md and the report."""

import pytest

from edgeopt.recipes.schema import parse_recipe
from edgeopt.report.html import render_report
from edgeopt.report.table import target_rows

RECIPE = {"model": "lenet5", "data": "digits", "stages": []}


def test_target_key_parses_and_refuses_unknown_targets():
    assert parse_recipe({**RECIPE, "target": "cortex-m4"}).target == "cortex-m4"
    assert parse_recipe(RECIPE).target is None
    with pytest.raises(ValueError, match="recipe.target must be one of cortex-m4, cortex-m7, "
                                         "x86-ort; got 'esp32'"):
        parse_recipe({**RECIPE, "target": "esp32"})


def _metrics():
    stage = {"name": "int8", "technique": "quantize", "accuracy": 0.9, "size_bytes": 1000,
             "latency_ms": 0.1, "onnx": "int8.onnx", "warnings": []}
    return {"model": "m", "data": "d", "warnings": [],
            "target": {"name": "cortex-m4", "description": "Cortex-M4F", "flash_bytes": 1 << 20,
                       "ram_bytes": 256 << 10},
            "stages": [{**stage, "name": "baseline", "target_fit": {"fits": False,
                                                                    "note": "float model"}},
                       {**stage, "target_fit": {"flash_bytes": 2048, "ram_bytes": 512,
                                                "fits": True, "note": ""}}]}


def test_target_rows_and_report():
    line, rows = target_rows(_metrics())
    assert line.startswith("cortex-m4: Cortex-M4F; flash 1.0 MiB, RAM 256.0 KiB")
    assert [r["fits"] for r in rows] == ["no", "yes"] and rows[1]["flash"] == "2.0 KiB"
    assert target_rows({"stages": []}) == ("", [])
    page = render_report(_metrics())
    assert "<section id=target>" in page and "float model" in page


def test_run_folder_keeps_test_inputs_and_target_profile(tmp_path):
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from edgeopt.recipes import run

    test = TensorDataset(torch.randn(300, 1, 8, 8), torch.arange(300) % 10)
    run._save_test_inputs(test, tmp_path)
    with np.load(tmp_path / "test_inputs.npz") as saved:
        assert saved["x"].shape == (100, 1, 8, 8) and saved["y"].tolist()[:3] == [0, 1, 2]
        np.testing.assert_array_equal(saved["x"], test.tensors[0][:100].numpy())
    big = TensorDataset(torch.randn(20, 3, 256, 256))  # 786 kB per sample: capped at ~4 MB
    run._save_test_inputs(big, tmp_path)
    with np.load(tmp_path / "test_inputs.npz") as saved:
        assert len(saved["x"]) == 5 and "y" not in saved
    recipe = parse_recipe({**RECIPE, "target": "cortex-m7"})
    assert run._target_profile(recipe)["target"]["qemu_machine"] == "mps2-an500"
    assert run._target_profile(parse_recipe(RECIPE)) == {}
