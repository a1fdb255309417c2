"""The page: sections that appear only when their data exists, escaping, no network, twin."""

import json
import re

import pytest
from report_samples import default_metrics, full_metrics

from edgeopt.report import html as report_html
from edgeopt.report import render_report, write_report
from edgeopt.report.load import normalize


@pytest.fixture(scope="module")
def full_page(full_report):
    return full_report.read_text()


def section_ids(page):
    return re.findall(r"<section id='?([\w-]+)", page)


def test_full_run_has_every_section(full_page):
    assert section_ids(full_page) == [
        "summary", "tradeoff", "sparsity", "stage-pruned", "stage-distilled", "stage-int8-qat",
        "stage-lowrank", "stage-clustered", "warnings"]
    for title in ("Pruning", "Distillation", "Quantization", "Low-rank factorization",
                  "Weight clustering"):
        assert f"<h3>{title}</h3>" in full_page
    assert "outlier layer2.0.downsample" in full_page
    assert full_page.count("<svg ") == 20


def test_default_run_shows_only_what_ran():
    page = render_report(default_metrics())
    assert section_ids(page) == ["summary", "tradeoff", "stage-int8", "warnings"]
    assert "<h3>Quantization</h3>" in page and "Per-layer statistics (9 layers)" in page
    assert "id=incomplete" not in page
    assert "<table>" in page  # the runner's own test looks for the table


def test_summary_table_has_the_issue_columns(full_page):
    head = re.search(r"<table><tr>(.*?)</tr>", full_page).group(1)
    for column in ("stage", "accuracy", "size", "latency", "speedup", "MACs", "peak mem"):
        assert f"<th>{column}</th>" in head
    assert "<td>98.29 %</td>" in full_page and "<td>5.36x</td>" in full_page
    assert "5.36x smaller" in full_page  # the at-a-glance cards


def test_page_is_self_contained(full_page):
    assert "<script" not in full_page
    assert "Content-Security-Policy" in full_page and "default-src 'none'" in full_page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", full_page)
    assert "name=viewport" in full_page


def test_run_text_is_escaped(fast_figures):
    metrics = default_metrics()
    metrics["model"] = "<script>alert(1)</script>"
    metrics["stages"][1]["name"] = "a&b<i>"
    metrics["warnings"] = ["<b>bold</b>"]
    page = render_report(metrics)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "a&amp;b&lt;i&gt;" in page and "&lt;b&gt;bold" in page


def test_incomplete_run_is_marked(fast_figures):
    metrics = full_metrics()
    del metrics["stages"][4:]
    metrics["stages"][3]["latency_ms"] = None
    page = render_report(metrics)
    assert "<section id=incomplete class=banner>" in page
    assert "int8_qat (incomplete)" in page
    assert "<tr class=unfinished><td>lowrank</td>" in page
    assert "<td class=missing>n/a</td>" in page
    assert "stage-lowrank" not in page


def test_oldest_metrics_render():
    page = render_report({"stages": [
        {"name": "baseline", "accuracy": 0.981, "size_bytes": 431000, "latency_ms": 0.41,
         "onnx": "baseline.onnx"},
        {"name": "int8", "accuracy": 0.979, "size_bytes": 112000, "latency_ms": 0.17,
         "onnx": "int8.onnx"}]})
    assert "? on ?" in page and section_ids(page)[:2] == ["summary", "tradeoff"]
    assert "This stage recorded no technique statistics." in page


def test_a_figure_that_cannot_be_drawn_does_not_sink_the_page(monkeypatch):
    from edgeopt.report import figures

    def broken(fig, data):
        raise ValueError("bad data")

    monkeypatch.setitem(figures.KINDS, "tradeoff", broken)
    page, twin = report_html.build_report(normalize(default_metrics()))
    assert "could not be drawn (bad data)" in page
    assert any("could not be drawn" in p for p in twin["problems"])


def test_write_report_writes_page_and_figure_twin(tmp_path, fast_figures):
    path = write_report(full_metrics(), tmp_path / "report.html")
    twin = json.loads((tmp_path / "figures.json").read_text())
    assert twin["format"] == "edgeopt-report-figures" and twin["version"] == 1
    page = path.read_text()
    ids = [f["id"] for f in twin["figures"]]
    assert len(ids) == 20 and all(f"id='fig-{i}'" in page for i in ids)
    kinds = {f["kind"] for f in twin["figures"]}
    assert kinds == {"tradeoff", "heatmap", "curves", "hist_grid", "mask_grid", "layer_bars"}
    assert not list(tmp_path.glob(".edgeopt-tmp-*"))
