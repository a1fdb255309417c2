"""Every bad recipe or config value is refused cleanly (API.md, "Errors"), proven on random
input: one `error:` line naming the field, exit code 2, no traceback, no run folder.

Each example starts from a valid recipe and breaks one place in it (a wrong type, a number out
of range, an unknown key, unicode, a huge number, nested junk). A recipe that happens to stay
valid is not run: `_execute` is replaced by a stand-in that raises `WouldRun`.
"""

import dataclasses
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeopt.recipes.run
from edgeopt.api import load_techniques
from edgeopt.cli import main
from edgeopt.config import config_kinds, config_type
from edgeopt.errors import ConfigError, ConfigTypeError, EdgeoptError

BASE: dict[str, Any] = {
    "model": "lenet300", "data": "digits", "seed": 0, "epochs": 2, "metric": "top1",
    "stages": [
        {"name": "pruned", "technique": "prune", "data": "train", "speed_guard": True,
         "config": {"sparsity": 0.5, "structure": "unstructured", "finetune_epochs": 1}},
        {"name": "int8", "technique": "quantize", "from": "pruned",
         "config": {"calibration_samples": 64, "method": "ptq"}},
        {"name": "small", "technique": "lowrank", "from": "baseline", "config": {}},
    ],
    "export": {"opset": 18},
    "measure": {"threads": 1, "warmup": 1, "runs": 3, "accuracy_budget": 1.0,
                "speed_threads": [1]},
}
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


class WouldRun(Exception):
    """The recipe passed validation (the stand-in for `_execute`)."""


@pytest.fixture(autouse=True)
def no_runs(monkeypatch):
    def stand_in(*args, **kwargs):
        raise WouldRun

    monkeypatch.setattr(edgeopt.recipes.run, "_execute", stand_in)


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "\u202e", "名前", "🦜", "<script>", "../../etc", "a" * 300, "\x00"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 3)), inner, max_size=3)),
    max_leaves=6)


def _places(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value in the recipe (mapping keys and list indices)."""
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _places(value, (*path, index))
    return found


PLACES = _places(BASE)
def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _copy(node: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(node, allow_unicode=True))


MAPPINGS = [()] + [p for p in PLACES if isinstance(_get(BASE, p), dict)]


@st.composite
def broken_recipes(draw) -> tuple[dict[str, Any], str]:
    """(recipe, name the error must mention): one value replaced, or one unknown key added."""
    recipe = _copy(BASE)
    if draw(st.booleans()):
        path = draw(st.sampled_from(PLACES))
        _get(recipe, path[:-1])[path[-1]] = draw(junk)
        named = [p for p in path if isinstance(p, str)][-1]
    else:
        path = draw(st.sampled_from(MAPPINGS))
        key = draw(st.one_of(st.text(min_size=1, max_size=10), st.integers(-5, 5)))
        target = _get(recipe, path)
        if key in target:
            return recipe, ""  # not new: nothing broken on purpose
        target[key] = draw(junk)
        named = str(key)
    return recipe, named


def _invoke(recipe: dict[str, Any]):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        out = Path(tmp) / "run"
        result = CliRunner().invoke(main, ["optimize", str(path), "--out", str(out), "--quiet"])
        left = sorted(p.name for p in Path(tmp).iterdir())
    return result, left


def _check_refused(result, left: list[str], named: str) -> None:
    if isinstance(result.exception, WouldRun):
        return  # the change left the recipe valid
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert named in output, (named, output)
    assert left == ["recipe.yaml"], left  # no run folder, no scratch folder


@FAST
@given(broken_recipes())
def test_a_broken_recipe_gives_one_error_line_naming_the_field(case):
    recipe, named = case
    _check_refused(*_invoke(recipe), named)


@FAST
@given(junk)
def test_a_recipe_that_is_not_a_mapping_is_refused(value):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(value, allow_unicode=True), encoding="utf-8")
        result = CliRunner().invoke(main, ["optimize", str(path), "--out", f"{tmp}/run"])
        left = sorted(p.name for p in Path(tmp).iterdir())
    if isinstance(value, dict):
        return  # covered above
    _check_refused(result, left, "recipe")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_text_that_is_not_yaml_is_refused(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        result = CliRunner().invoke(main, ["optimize", str(path), "--out", f"{tmp}/run"])
        left = sorted(p.name for p in Path(tmp).iterdir())
    if isinstance(result.exception, WouldRun):
        return
    _check_refused(result, left, "recipe")


# --- configs through the Python API -------------------------------------------------------

load_techniques()
KINDS = config_kinds()


def _fields(kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(config_type(kind))]


@st.composite
def config_cases(draw) -> tuple[str, dict[str, Any], str]:
    kind = draw(st.sampled_from(KINDS))
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.one_of(st.text(max_size=8), st.integers(-3, 3)))
        if key in _fields(kind) or key in ("type", "version"):
            key = f"{key}_unknown"
    else:
        key = draw(st.sampled_from(_fields(kind)))
    return kind, {key: draw(junk)}, str(key)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(config_cases())
def test_configs_raise_config_errors_naming_the_field(case):
    kind, values, named = case
    cls = config_type(kind)
    try:
        cls.from_dict(values)
    except (ConfigError, ConfigTypeError) as exc:
        assert named in str(exc), (named, str(exc))
        assert "\n" not in str(exc)
    try:
        cls(**values) if all(isinstance(k, str) for k in values) else None
    except (ConfigError, ConfigTypeError) as exc:
        assert named in str(exc), (named, str(exc))
    except TypeError as exc:  # an unknown keyword: Python's own message names it
        assert named in str(exc) and "unexpected keyword" in str(exc)


def test_huge_and_non_finite_numbers_name_the_field():
    for value in (math.inf, -math.inf, math.nan, 10**400, 2**64):
        with pytest.raises(EdgeoptError, match="sparsity"):
            config_type("prune").from_dict({"sparsity": value})


# --- a couple of real processes: the installed entry point, not CliRunner ------------------

@pytest.mark.parametrize("change,named", [
    ({"seed": "zero"}, "recipe.seed"),
    ({"stages": [{"technique": "prune", "config": {"sparsity": 7}}]}, "sparsity"),
])
def test_real_process_prints_one_error_line(tmp_path, change, named):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "optimize", str(path), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
