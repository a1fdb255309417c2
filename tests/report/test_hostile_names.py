"""Names from the user (stage names, layer names, model and data labels, recipe paths) are text in
report.html, never markup: a report built from hostile names runs no script in Chromium, even
with its Content-Security-Policy removed (escaping alone must hold)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from report_samples import full_metrics
from test_browser import CHROMIUM, REQUIRED, open_in_chromium

from edgeopt.report import write_report

PAYLOADS = [
    '<script>console.log("PWNED-script");window.__pwned=1</script>',
    '<img src=x onerror="console.log(\'PWNED-img\')">',
    '"><svg onload=console.log("PWNED-svg")>',
    "'><iframe srcdoc=\"<script>parent.console.log('PWNED-iframe')</script>\"></iframe>",
    '</title></style></textarea><script>console.log("PWNED-close")</script>',
    "javascript:console.log('PWNED-href')",
]


def _hostile(i: int) -> str:
    return PAYLOADS[i % len(PAYLOADS)]


def hostile_metrics() -> dict:
    """The sample full run with every user-supplied name replaced by a payload."""
    metrics = copy.deepcopy(full_metrics())
    metrics["model"] = "/home/u/<script>console.log('PWNED-model')</script>/net.py:build"
    metrics["data"] = _hostile(1)
    metrics["warnings"] = [_hostile(2)]
    names = {}
    for i, stage in enumerate(metrics["stages"]):
        names[stage["name"]] = f"{stage['name']}{_hostile(i)}"
        stage["name"] = names[stage["name"]]
        stage["onnx"] = f"{_hostile(i + 1)}.onnx"
        stage["warnings"] = [_hostile(i + 2)]
        for j, stats in enumerate(stage["technique_stats"].values()):
            for k, layer in enumerate(stats.get("layers", [])):
                layer["name"] = f"layer{k}{_hostile(j + k)}"
            if isinstance(stats.get("masks"), dict):
                stats["masks"] = {f"{key}{_hostile(k)}": mask
                                  for k, (key, mask) in enumerate(stats["masks"].items())}
            for row in stats.get("sensitivity", []):
                row["name"] = _hostile(3)
            stats[_hostile(4)] = _hostile(5)  # an unknown fact: key and value
            stats["method"] = _hostile(0)
        stage["technique_stats"][_hostile(1)] = {"note": _hostile(2)}  # an unknown technique
    recipe_stages = metrics.get("recipe", {}).get("stages", [])
    for item in recipe_stages:
        item["name"] = names.get(item.get("name"), item.get("name"))
    recipe_stages.append({"name": _hostile(0), "technique": "prune"})  # an unfinished stage
    return metrics


def _tags(dom: str) -> list[str]:
    return re.findall(r"<[a-zA-Z][^>]*>", dom)


def test_hostile_names_are_text_in_the_page(tmp_path):
    page = write_report(hostile_metrics(), tmp_path / "report.html")
    html = page.read_text()
    assert not re.search(r"<(script|iframe|img)\b", html, re.I)
    assert not [t for t in _tags(html) if re.search(r"\son\w+\s*=", t, re.I)]
    assert not [t for t in _tags(html) if "javascript:" in t.lower()]
    assert "&lt;script&gt;" in html  # shown, as text
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["figures"]  # the figures were drawn from the hostile layer names too


@pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="headless Chromium is not installed")
def test_no_script_runs_in_chromium_even_without_the_csp(tmp_path):
    page = write_report(hostile_metrics(), tmp_path / "report.html")
    html = page.read_text()
    bare = tmp_path / "no-csp.html"  # escaping must hold on its own
    bare.write_text(re.sub(r"<meta http-equiv=Content-Security-Policy[^>]*>", "", html))
    assert "Content-Security-Policy" not in bare.read_text()
    for candidate in (page, bare):
        dom, console, _ = open_in_chromium(candidate, tmp_path, width=900, height=1200)
        assert not [line for line in console if "PWNED" in line], console
        assert not re.search(r"<(script|iframe|img)\b", dom, re.I)
        assert not [t for t in _tags(dom) if re.search(r"\son\w+\s*=", t, re.I)]
        assert "PWNED-script" in dom  # the payload is on the page, as inert text
