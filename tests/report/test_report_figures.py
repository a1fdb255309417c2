"""Each plot kind draws a well-formed, self-contained inline SVG from its spec."""

import re
import xml.etree.ElementTree as ET

import pytest
from report_samples import full_metrics

from edgeopt.report import extract, figures
from edgeopt.report.load import normalize

SVG = "{http://www.w3.org/2000/svg}"


def one_per_kind():
    specs = extract.build_figures(normalize(full_metrics()).metrics)
    by_kind = {}
    for spec in specs:
        by_kind.setdefault(spec["kind"], spec)
    return by_kind


SPECS = one_per_kind()


def test_every_kind_is_exercised():
    assert set(SPECS) == set(figures.KINDS)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_kind_renders_scalable_self_contained_svg(kind):
    spec = SPECS[kind]
    svg = figures.render_svg(spec)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("width") == "100%" and root.get("viewBox")
    assert root.get("aria-label") == spec["title"]
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert ids and all(i.startswith(spec["id"] + "-") for i in ids)
    refs = re.findall(r'href="#([^"]+)"|url\(#([^)]+)\)', svg)
    assert all((a or b) in ids for a, b in refs)  # every reference stays inside the figure
    assert not re.search(r'(href|src)="(https?:|//)', svg)
    assert len(root.findall(f".//{SVG}text")) >= 3  # titles/labels are text, not paths


def test_layer_names_and_values_reach_the_drawing():
    spec = SPECS["layer_bars"]
    svg = figures.render_svg(spec)
    for name in spec["data"]["layers"]:
        assert f">{name}<" in svg


def test_figure_with_nan_gaps_and_long_names_renders():
    data = {"layers": ["a" * 60, "b"], "series": {"v": [None, 2.0]}, "unit": "x",
            "highlight": ["b"], "separate": False}
    svg = figures.render_svg({"id": "t", "kind": "layer_bars", "title": "t", "data": data})
    assert "…" + "a" * 25 in svg
    heat = {"rows": ["r"], "columns": None, "values": [[None, 0.5]], "vmin": 0, "vmax": 1,
            "colorbar": "c", "x_label": "x", "percent": True}
    assert figures.render_svg({"id": "h", "kind": "heatmap", "title": "h", "data": heat})


def test_inline_svg_escapes_the_label():
    svg = figures.inline_svg('<?xml?><svg width="10pt" height="5pt" viewBox="0 0 10 5"></svg>',
                             "p-", 'a "b" <c>')
    assert svg.startswith('<svg role="img" aria-label="a &quot;b&quot; &lt;c>"')
    assert 'width="100%" style="max-width:10pt"' in svg
