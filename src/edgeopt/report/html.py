"""Render metrics.json content as a self-contained HTML page (no network at view time)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgeopt.recipes.summary import stage_rows

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%;font-size:.9rem;overflow-x:auto;display:block}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.warn{color:#a40}
"""


def render_report(metrics: dict[str, Any]) -> str:
    rows = stage_rows(metrics.get("stages", []))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (rows[0] if rows else []))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    warnings = "".join(f"<li class=warn>{html.escape(w)}</li>" for w in metrics.get("warnings", []))
    title = html.escape(f"edgeopt: {metrics.get('model', '?')} on {metrics.get('data', '?')}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{title}</title><style>{_STYLE}</style></head><body><h1>{title}</h1>"
            f"<section id=summary><h2>Stages</h2><table><tr>{head}</tr>{body}</table></section>"
            f"<section id=warnings><h2>Warnings</h2><ul>{warnings or '<li>none</li>'}</ul>"
            f"</section></body></html>")


def write_report(metrics: dict[str, Any], path: Path) -> Path:
    path.write_text(render_report(metrics), encoding="utf-8")
    return path
