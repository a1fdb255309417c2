"""Page assembly: normalized metrics + figure specs -> one self-contained HTML page.

No scripts, no external resources (a Content-Security-Policy forbids any fetch), inline SVG
figures, CSS that reflows to a single column on a phone. Every text from the run is escaped.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from edgeopt.report import extract
from edgeopt.report.load import RunData, normalize
from edgeopt.report.table import COLUMNS, NA, summary_rows, target_rows

TWIN_NAME = "figures.json"
TECHNIQUES = {"quant": "Quantization", "prune": "Pruning", "distill": "Distillation",
              "lowrank": "Low-rank factorization", "cluster": "Weight clustering"}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:74rem;padding:0 1rem 3rem;color:#1d2430;background:#fff}
h1{font-size:1.45rem;margin:1.2rem 0 .2rem}h3{font-size:1rem;margin:1.4rem 0 .5rem}
h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:2px solid #e3e7ee;padding-bottom:.2rem}
.sub,.note{color:#5b6575;margin:.2rem 0;font-size:.9rem}
nav{display:flex;flex-wrap:wrap;gap:.3rem 1rem;margin:.8rem 0;font-size:.9rem}
a{color:#1b6ca8;text-decoration:none}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85rem;min-width:100%}
th,td{padding:.3rem .55rem;border-bottom:1px solid #e3e7ee;text-align:right;white-space:nowrap}
th{background:#f5f7fa;font-weight:600}
td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fff}
th:first-child{background:#f5f7fa}
.missing{color:#b35c00}.bad{color:#c0392b}.good{color:#1a7f37}
tr.unfinished td{color:#b35c00;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}
.card{border:1px solid #e3e7ee;border-radius:6px;padding:.45rem .8rem;font-size:.9rem}
.card b{display:block;font-size:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,30rem),1fr));gap:1rem}
figure{margin:0;padding:.6rem;border:1px solid #e3e7ee;border-radius:6px;min-width:0}
figure svg{display:block;height:auto;margin:.3rem auto 0}
figcaption{font-size:.85rem;color:#3c4656}figcaption b{color:#1d2430}
.callouts{color:#c0392b;font-size:.85rem;margin:.4rem 0 0;padding-left:1.1rem}
.banner{background:#fff4e5;border:1px solid #f0b45a;border-radius:6px;padding:.2rem 1rem;
margin-top:1rem}.banner h2{border:0;margin-top:.6rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;font-size:.9rem;
margin:.4rem 0}dl.facts dt{color:#5b6575}dl.facts dd{margin:0;overflow-wrap:anywhere}
details{margin:.6rem 0}summary{cursor:pointer;color:#1b6ca8;font-size:.9rem}
footer{margin-top:2.5rem;color:#5b6575;font-size:.8rem}
"""


def build_report(run: RunData) -> tuple[str, dict[str, Any]]:
    """The page and its figures.json twin, both complete in memory before anything is written."""
    metrics = run.metrics
    specs = extract.build_figures(metrics)
    problems = list(run.problems)
    rendered = {spec["id"]: _figure_html(spec, problems) for spec in specs}
    parts = [_header(metrics, problems), _summary(metrics), _target(metrics)]
    parts += [_figure_section(sid, title, specs, rendered) for sid, title in
              (("tradeoff", "Accuracy, size and latency"), ("sparsity", "Sparsity per layer"))]
    parts += [_stage_section(s, specs, rendered) for s in metrics["stages"] if _has_section(s)]
    parts.append(_warnings(metrics))
    page = _page(metrics, "".join(parts))
    twin = {"format": "edgeopt-report-figures", "version": 1, "problems": problems,
            "figures": specs}
    return page, twin


def render_report(metrics: dict[str, Any] | RunData) -> str:
    """The HTML page for a metrics dict (as in metrics.json) or a loaded run."""
    return build_report(_as_run(metrics))[0]


def write_report(metrics: dict[str, Any] | RunData, path: str | Path) -> Path:
    """Write `path` (report.html) and figures.json beside it, each atomically."""
    from edgeopt.atomic import write_text

    page, twin = build_report(_as_run(metrics))
    path = Path(path)
    for target, text in ((path.with_name(TWIN_NAME), json.dumps(twin, indent=1)),
                         (path, page)):
        write_text(target, text)
    return path


def _as_run(metrics: dict[str, Any] | RunData) -> RunData:
    return metrics if isinstance(metrics, RunData) else normalize(metrics)


def _page(metrics: dict[str, Any], body: str) -> str:
    title = escape(f"edgeopt report: {metrics.get('model', '?')} on {metrics.get('data', '?')}")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<meta http-equiv=Content-Security-Policy content=\"{_CSP}\">"
            f"<link rel=icon href='data:,'><title>{title}</title><style>{_STYLE}</style>"
            f"</head><body>{body}<footer>Every figure's data is in {TWIN_NAME} beside this "
            "file (ids match the figures' <code>fig-</code> anchors); the stage metrics are in "
            "metrics.json.</footer></body></html>\n")


def _header(metrics: dict[str, Any], problems: list[str]) -> str:
    stages = metrics["stages"]
    model, data = escape(str(metrics.get("model", "?"))), escape(str(metrics.get("data", "?")))
    version = escape(str(metrics.get("edgeopt_version", "unknown")))
    out = [f"<header><h1>{model} on {data}</h1><p class=sub>edgeopt {version} · "
           f"{len(stages)} stage(s) measured in ONNX Runtime</p></header>"]
    if problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in problems)
        out.append("<section id=incomplete class=banner><h2>Incomplete run</h2><p>Showing "
                   f"what finished. Missing:</p><ul>{items}</ul></section>")
    out.append(_cards(stages))
    return "".join(out)


def _cards(stages: list[dict[str, Any]]) -> str:
    cards = []
    for s in stages[1:]:
        bits = []
        if s.get("size_ratio") is not None:
            bits.append(f"{s['size_ratio']:.2f}x smaller")
        if s.get("speedup"):
            key, ratio = next(iter(s["speedup"].items()))
            bits.append(f"{ratio:.2f}x faster @{escape(key)}")
        if s.get("accuracy_drop") is not None:
            cls = "bad" if any("accuracy dropped" in w for w in s["warnings"]) else "good"
            bits.append(f"<span class={cls}>{-s['accuracy_drop']:+.2f} pt accuracy</span>")
        if bits:
            cards.append(f"<div class=card><b>{escape(s['name'])}</b>{' · '.join(bits)}</div>")
    return f"<div class=cards>{''.join(cards)}</div>" if cards else ""


def _summary(metrics: dict[str, Any]) -> str:
    rows = summary_rows(metrics["stages"])
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = []
    for stage, row in zip(metrics["stages"], rows):
        cells = []
        for column, text in row.items():
            cls = " class=missing" if text == NA else ""
            if column == "stage" and stage["missing"]:
                text += " (incomplete)"
            cells.append(f"<td{cls}>{escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    body += [f"<tr class=unfinished><td>{escape(n)}</td><td colspan={len(COLUMNS) - 1}>"
             "did not finish</td></tr>" for n in metrics["unfinished"]]
    nav = _nav(metrics)
    return (f"{nav}<section id=summary><h2>Stages</h2><div class=scroll><table><tr>{head}</tr>"
            f"{''.join(body)}</table></div><p class=note>Accuracy on the test split; size of "
            "the ONNX file(s); latency: median at batch 1; speedup against the baseline, "
            "timed interleaved; MACs and parameters per inference; peak mem: largest live "
            "activation memory.</p></section>")


def _target(metrics: dict[str, Any]) -> str:
    """The recipe's deployment target: budgets and whether each stage fits."""
    line, rows = target_rows(metrics)
    if not rows:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return (f"<section id=target><h2>Target</h2><p>{escape(line)}</p><div class=scroll><table>"
            f"<tr>{head}</tr>{body}</table></div><p class=note>Flash: weights, biases and "
            "per-channel requantization of the lowered int8 graph (code not included); RAM: "
            "the generated C's arena plus input and output. <code>edgeopt deploy</code> "
            "measures the built image."
            "</p></section>")


def _nav(metrics: dict[str, Any]) -> str:
    links = [("summary", "Stages")]
    links += [(f"stage-{extract.slug(s['name'])}", s["name"]) for s in metrics["stages"]
              if _has_section(s)]
    links.append(("warnings", "Warnings"))
    return "<nav>" + "".join(f"<a href='#{escape(i)}'>{escape(t)}</a>" for i, t in links) + "</nav>"


def _figure_html(spec: dict[str, Any], problems: list[str]) -> str:
    from edgeopt.report.figures import render_svg

    try:
        svg = render_svg(spec)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
        problems.append(f"figure {spec['id']} could not be drawn: {exc}")
        svg = f"<p class=missing>This figure could not be drawn ({escape(str(exc))}).</p>"
    caption = f"<b>{escape(spec['title'])}</b> {escape(spec['caption'])}"
    callouts = "".join(f"<li>{escape(c)}</li>" for c in spec["callouts"])
    return (f"<figure id='fig-{escape(spec['id'])}' data-kind={spec['kind']}>"
            f"<figcaption>{caption}</figcaption>{svg}"
            + (f"<ul class=callouts>{callouts}</ul>" if callouts else "") + "</figure>")


def _figure_section(section: str, title: str, specs: list[dict[str, Any]],
                    rendered: dict[str, str]) -> str:
    figs = [rendered[s["id"]] for s in specs if s["section"] == section]
    if not figs:
        return ""
    return f"<section id={section}><h2>{escape(title)}</h2><div class=grid>{''.join(figs)}" \
           "</div></section>"


def _has_section(stage: dict[str, Any]) -> bool:
    return bool(stage["technique_stats"]) or stage["name"] != "baseline"


def _stage_section(stage: dict[str, Any], specs: list[dict[str, Any]],
                   rendered: dict[str, str]) -> str:
    name = stage["name"]
    technique = escape(str(stage.get("technique") or ""))
    parts = [f"<section id='stage-{escape(extract.slug(name))}' class=stage>"
             f"<h2>Stage {escape(name)} <small class=sub>{technique}</small></h2>"]
    parts += [f"<p class=bad>warning: {escape(w)}</p>" for w in stage["warnings"]]
    if stage["missing"]:
        parts.append(f"<p class=missing>Not recorded: {escape(', '.join(stage['missing']))}.</p>")
    if not stage["technique_stats"]:
        parts.append("<p class=note>This stage recorded no technique statistics.</p>")
    for key, stats in stage["technique_stats"].items():
        if isinstance(stats, dict):
            figs = [rendered[s["id"]] for s in specs
                    if s["stage"] == name and s["technique"] == key]
            parts.append(_technique(key, stats, figs))
    return "".join(parts) + "</section>"


def _technique(key: str, stats: dict[str, Any], figures: list[str]) -> str:
    title = escape(TECHNIQUES.get(key, key))
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in extract.facts(stats))
    out = [f"<h3>{title}</h3>"]
    if facts:
        out.append(f"<dl class=facts>{facts}</dl>")
    if figures:
        out.append(f"<div class=grid>{''.join(figures)}</div>")
    table = extract.layer_table(extract.layers_of(stats))
    if table:
        head = "".join(f"<th>{escape(c)}</th>" for c in table["columns"])
        rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                       for row in table["rows"])
        out.append(f"<details><summary>Per-layer statistics ({len(table['rows'])} layers)"
                   f"</summary><div class=scroll><table><tr>{head}</tr>{rows}</table></div>"
                   "</details>")
    return "".join(out)


def _warnings(metrics: dict[str, Any]) -> str:
    items = "".join(f"<li>{escape(w)}</li>" for w in metrics["warnings"]) or "<li>none</li>"
    return f"<section id=warnings><h2>Warnings</h2><ul>{items}</ul></section>"
