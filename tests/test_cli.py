"""The CLI's contract: one `error:` line and exit code 2 for bad input, nothing half-written."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeopt.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("content,expected", [
    ("model: [resnet8\n", "not valid YAML"),
    ("modle: resnet8\n", "recipe.modle is not a known key"),
    ("model: resnet9\n", "recipe.model must be one of"),
    ("data: imagenet\n", "recipe.data must be one of"),
    ("seed: zero\n", "recipe.seed must be int"),
    ("stages:\n  - technique: quantize\n    config: {weights: {bits: 99}}\n", "QuantSpec.bits"),
    ("stages:\n  - technique: prune_everything\n", "technique must be one of"),
    ("model: tcn1d\ndata: mnist5k\n", "tcn1d"),
])
def test_bad_recipes_exit_2_with_one_line_and_no_output(tmp_path, content, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    out = tmp_path / "run"
    result = run("optimize", str(recipe), "--out", str(out))
    assert result.exit_code == 2
    assert expected in _error_line(result)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_missing_recipe_and_missing_option(tmp_path):
    result = run("optimize", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "does not exist" in _error_line(result)
    result = run("optimize")
    assert result.exit_code == 2 and "--out" in _error_line(result)


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("optimize", "--out", str(blocker / "run"))
    assert result.exit_code == 2 and "cannot be written" in _error_line(result)


def test_help_lists_every_subcommand_without_importing_torch():
    code = ("import sys; from click.testing import CliRunner; from edgeopt.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); print(r.output); "
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for command in ("optimize", "report", "list", "profile", "measure"):
        assert command in out
    assert "torch not loaded" in out


def test_list_shows_models_data_sets_and_techniques():
    result = run("list")
    assert result.exit_code == 0
    assert "resnet8" in result.output and "mnist5k" in result.output
    assert "quantize" in result.output
