"""Figure specs from normalized metrics: plain JSON data per plot, the ``figures.json`` twin.

Pure functions, no plotting. Each reads the fields documented in :mod:`edgeopt.report` by
meaning and returns None when they are absent or malformed, so a section appears only when its
data exists. Schema and outlier rule: see the package docstring.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Any

from edgeopt.report.load import number

Figure = dict[str, Any]
MAX_PANELS = 12
MAX_BARS = 40
FIGURE_KEYS = {"layers", "curves", "history", "rounds", "masks", "sensitivity"}


def figure(section: str, kind: str, title: str, data: dict[str, Any], *, caption: str = "",
           callouts: list[str] | None = None, stage: str | None = None,
           technique: str | None = None) -> Figure:
    return {"id": slug(f"{stage or section}-{technique or ''}-{title}"), "section": section,
            "stage": stage, "technique": technique, "kind": kind, "title": title,
            "caption": caption, "callouts": callouts or [], "data": data}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def build_figures(metrics: dict[str, Any]) -> list[Figure]:
    """Every figure of a report, in page order: trade-off, sparsity map, then per stage."""
    stages = metrics.get("stages", [])
    figures = tradeoff(stages) + [f for f in [sparsity_map(stages)] if f]
    for stage in stages:
        for key, stats in stage.get("technique_stats", {}).items():
            if isinstance(stats, dict):
                figures += technique_figures(stage["name"], key, stats)
    seen: dict[str, int] = {}
    for fig in figures:  # ids must be unique in the page
        seen[fig["id"]] = seen.get(fig["id"], 0) + 1
        if seen[fig["id"]] > 1:
            fig["id"] = f"{fig['id']}-{seen[fig['id']]}"
    return figures


def accuracy_percent(value: float) -> float:
    return 100 * value if abs(value) <= 1 else value


def pareto(xs: list[float], ys: list[float]) -> list[bool]:
    """True where no other point has x <= and y >= with one strictly better (min x, max y)."""
    return [not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in zip(xs, ys))
            for x, y in zip(xs, ys)]


def _quality(stage: dict[str, Any]) -> tuple[float | None, str]:
    """The stage's higher-is-better quality in percent: top-1 accuracy, or the run's metric
    (agreement with the baseline, cosine to it); None for lower-is-better metrics (mse)."""
    metric = stage.get("metric") or "top1"
    if metric == "top1":
        value = stage.get("accuracy")
        return (None if value is None else accuracy_percent(value)), "accuracy"
    value = stage.get("score") if metric in ("agreement", "cosine") else None
    return (None if value is None else 100 * value), metric


def tradeoff(stages: list[dict[str, Any]]) -> list[Figure]:
    out = []
    for key, short, better, label, scale in (
            ("size_bytes", "size", "smaller", "model size (KiB)", 1 / 1024),
            ("latency_ms", "latency", "faster", "latency (ms, batch 1)", 1.0)):
        points = [(s["name"], s[key] * scale, _quality(s)[0]) for s in stages
                  if s.get(key) is not None and _quality(s)[0] is not None]
        if len(points) < 2:
            continue
        names, xs, ys = (list(t) for t in zip(*points))
        what = _quality(stages[0])[1]
        data = {"stages": names, "x": xs, "y": ys, "pareto": pareto(xs, ys),
                "x_label": label, "y_label": f"{what} (%)"}
        out.append(figure("tradeoff", "tradeoff", f"{what.capitalize()} vs {short}", data,
                          caption=f"Stages measured in ONNX Runtime. Ringed and joined: the "
                                  f"Pareto front (no other stage is as accurate and {better})."))
    return out


def layers_of(stats: dict[str, Any]) -> list[dict[str, Any]]:
    layers = stats.get("layers")
    if not isinstance(layers, list):
        return []
    return [la for la in layers if isinstance(la, dict) and isinstance(la.get("name"), str)]


def sparsity_map(stages: list[dict[str, Any]]) -> Figure | None:
    """Per-layer sparsity, layers x stages, over every stage that recorded any."""
    columns: dict[str, dict[str, float]] = {}
    for stage in stages:
        per_layer = {la["name"]: v for stats in stage.get("technique_stats", {}).values()
                     if isinstance(stats, dict) for la in layers_of(stats)
                     if (v := number(la.get("sparsity"))) is not None}
        if per_layer:
            columns[stage["name"]] = per_layer
    if not columns:
        return None
    rows = list(dict.fromkeys(name for col in columns.values() for name in col))
    values = [[columns[c].get(r) for c in columns] for r in rows]
    data = {"rows": rows, "columns": list(columns), "values": values, "vmin": 0.0, "vmax": 1.0,
            "colorbar": "sparsity (fraction of zero weights)", "x_label": "stage",
            "percent": True}
    overall = [v for row in values for v in row if v is not None]
    return figure("sparsity", "heatmap", "Sparsity per layer and stage", data,
                  caption=f"{len(rows)} layers; mean sparsity "
                          f"{100 * statistics.fmean(overall):.1f} % over the cells shown.")


def technique_figures(stage: str, key: str, stats: dict[str, Any]) -> list[Figure]:
    """The per-stage plots one technique's statistics support."""
    layers = layers_of(stats)
    ctx = {"section": f"stage-{slug(stage)}", "stage": stage, "technique": key}
    made = [error_hists(ctx, layers, "weight_error_hist", "weight"),
            error_hists(ctx, layers, "act_error_hist", "activation"),
            saturation_bars(ctx, layers), saturation_map(ctx, layers),
            before_after(ctx, layers, "params", "parameters"),
            before_after(ctx, layers, "macs", "MACs"), ranks(ctx, layers),
            sqnr(ctx, layers),
            layer_values(ctx, layers, "clusters", "Clusters per layer", "clusters"),
            layer_values(ctx, layers, "stored_bytes", "Stored weight bytes per layer", "bytes"),
            curves(ctx, stats), rounds(ctx, stats), masks(ctx, stats), sensitivity(ctx, stats)]
    return [f for f in made if f]


def _fig(ctx: dict[str, Any], kind: str, title: str, data: dict[str, Any], **kw: Any) -> Figure:
    return figure(ctx["section"], kind, title, data, stage=ctx["stage"],
                  technique=ctx["technique"], **kw)


def histogram(value: Any) -> dict[str, list[float]] | None:
    """{"edges", "counts"} if well-formed (n+1 increasing edges, n counts >= 0, some > 0)."""
    if not isinstance(value, dict):
        return None
    edges, counts = value.get("edges"), value.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or not counts:
        return None
    e, c = [number(x) for x in edges], [number(x) for x in counts]
    if (len(e) != len(c) + 1 or None in e or None in c or min(c) < 0 or sum(c) <= 0
            or any(b <= a for a, b in zip(e, e[1:]))):
        return None
    return {"edges": e, "counts": c}


def hist_rms(hist: dict[str, list[float]]) -> float:
    edges, counts = hist["edges"], hist["counts"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    return math.sqrt(sum(c * x * x for c, x in zip(counts, centers)) / sum(counts))


def error_hists(ctx: dict[str, Any], layers: list[dict[str, Any]], field: str,
                label: str) -> Figure | None:
    entries = []
    for layer in layers:
        hist = histogram(layer.get(field))
        if hist:
            entries.append({"name": layer["name"], **hist, "rms": hist_rms(hist),
                            "outlier": layer.get("outlier") is True})
    if not entries:
        return None
    median = statistics.median(e["rms"] for e in entries)
    for e in entries:
        e["outlier"] = e["outlier"] or (len(entries) >= 3 and e["rms"] > 3 * median)
    outliers = [e for e in entries if e["outlier"]]
    ranked = outliers + sorted((e for e in entries if not e["outlier"]), key=lambda e: -e["rms"])
    shown = {e["name"] for e in ranked[:MAX_PANELS]}
    callouts = [f"outlier {e['name']}: RMS error {e['rms']:.3g}"
                + (f" ({e['rms'] / median:.1f}x the median layer)" if median > 0 else "")
                for e in outliers]
    caption = (f"Quantized minus float {label} values, per layer; {len(entries)} layers"
               + (f", {len(shown)} shown (outliers and largest errors first)"
                  if len(shown) < len(entries) else "") + ".")
    data = {"layers": entries, "shown": [e["name"] for e in entries if e["name"] in shown],
            "x_label": f"{label} quantization error", "median_rms": median}
    return _fig(ctx, "hist_grid", f"{label.capitalize()} quantization error per layer", data,
                caption=caption, callouts=callouts)


def _series(layers: list[dict[str, Any]], fields: dict[str, str],
            scale: float = 1.0) -> tuple[list[str], dict[str, list[float | None]]]:
    """Layers with any of `fields` (field -> label) and, per label, their values (None gaps)."""
    rows = [la for la in layers if any(number(la.get(f)) is not None for f in fields)]
    series = {}
    for field, label in fields.items():
        values = [number(la.get(field)) for la in rows]
        if any(v is not None for v in values):
            series[label] = [None if v is None else v * scale for v in values]
    return [la["name"] for la in rows], series


def _bars(ctx: dict[str, Any], title: str, names: list[str], series: dict[str, Any],
          unit: str, *, caption: str = "", callouts: list[str] | None = None,
          highlight: list[str] | None = None, separate: bool = False) -> Figure | None:
    if not names:
        return None
    data = {"layers": names[:MAX_BARS], "series": {k: v[:MAX_BARS] for k, v in series.items()},
            "unit": unit, "highlight": highlight or [], "separate": separate}
    if len(names) > MAX_BARS:
        caption += f" First {MAX_BARS} of {len(names)} layers."
    return _fig(ctx, "layer_bars", title, data, caption=caption.strip(), callouts=callouts)


def saturation_bars(ctx: dict[str, Any], layers: list[dict[str, Any]]) -> Figure | None:
    names, series = _series(layers, {"clip_ratio": "clipped", "saturation": "saturated"}, 100.0)
    peak = {n: max((s[i] or 0.0) for s in series.values()) for i, n in enumerate(names)}
    hot = sorted((n for n in names if peak[n] >= 1.0), key=lambda n: -peak[n])
    callouts = [f"{n}: {peak[n]:.1f} % of activations at the quantization range's limits"
                for n in hot[:5]]
    none = "No layer clipped or saturated any activation. " if not any(peak.values()) else ""
    return _bars(ctx, "Activation clipping and saturation per layer", names, series,
                 "% of activations", highlight=hot, callouts=callouts,
                 caption=none + "Share of calibration activations clipped by the chosen range, "
                         "and of quantized outputs stuck at qmin/qmax. Layers at 1 % or more in "
                         "red.")


def saturation_map(ctx: dict[str, Any], layers: list[dict[str, Any]]) -> Figure | None:
    rows, values = [], []
    for layer in layers:
        channels = layer.get("channel_saturation")
        if isinstance(channels, list) and channels:
            rows.append(layer["name"])
            values.append([number(v) for v in channels])
    if not rows:
        return None
    width = max(len(v) for v in values)
    values = [v + [None] * (width - len(v)) for v in values]
    top = max((x for v in values for x in v if x is not None), default=1.0) or 1.0
    data = {"rows": rows, "columns": None, "values": values, "vmin": 0.0, "vmax": top,
            "colorbar": "saturated fraction", "x_label": "output channel", "percent": False}
    return _fig(ctx, "heatmap", "Activation saturation map", data,
                caption="Fraction of each output channel's quantized values at qmin/qmax; "
                        "blank cells: the layer has fewer channels.")


def before_after(ctx: dict[str, Any], layers: list[dict[str, Any]], field: str,
                 unit: str) -> Figure | None:
    rows = [la for la in layers if number(la.get(f"{field}_before")) is not None
            and number(la.get(f"{field}_after")) is not None]
    if not rows:
        return None
    before = [la[f"{field}_before"] for la in rows]
    after = [la[f"{field}_after"] for la in rows]
    ratio = f" ({sum(before) / sum(after):.2f}x fewer)" if sum(after) > 0 else ""
    return _bars(ctx, f"{unit[0].upper()}{unit[1:]} per layer, before and after",
                 [la["name"] for la in rows], {"before": before, "after": after}, unit,
                 caption=f"Total {unit}: {_short(sum(before))} -> {_short(sum(after))}{ratio}.")


def _short(value: float) -> str:
    from edgeopt.report.table import human

    return human(value)


def sqnr(ctx: dict[str, Any], layers: list[dict[str, Any]]) -> Figure | None:
    names, series = _series(layers, {"weight_sqnr_db": "weight", "act_sqnr_db": "activation"})
    if not names:
        return None
    worst = {n: min(v[i] for v in series.values() if v[i] is not None)
             for i, n in enumerate(names)}
    median = statistics.median(worst.values())
    low = [n for n in names if len(names) >= 3 and worst[n] < median - 10]
    return _bars(ctx, "Quantization SQNR per layer", names, series, "SQNR (dB, higher is better)",
                 highlight=low, callouts=[f"low SQNR {n}: {worst[n]:.1f} dB (median "
                                          f"{median:.1f} dB)" for n in low])


def ranks(ctx: dict[str, Any], layers: list[dict[str, Any]]) -> Figure | None:
    full = "full_rank" if any("full_rank" in la for la in layers) else "max_rank"
    names, series = _series(layers, {"rank": "kept rank", full: "full rank"})
    if "kept rank" not in series:
        return None
    energy = [v for la in layers
              if (v := number(la.get("energy", la.get("energy_kept")))) is not None]
    caption = (f"Energy kept: {100 * min(energy):.1f} % (lowest layer) to "
               f"{100 * max(energy):.1f} %." if energy else "")
    return _bars(ctx, "Rank per layer", names, series, "rank", caption=caption)


def layer_values(ctx: dict[str, Any], layers: list[dict[str, Any]], field: str, title: str,
                 unit: str) -> Figure | None:
    names, series = _series(layers, {field: unit})
    return _bars(ctx, title, names, series, unit) if series else None


def _numeric_series(columns: dict[str, Any]) -> dict[str, list[float | None]]:
    out = {}
    for name, values in columns.items():
        if isinstance(values, list):
            clean = [number(v) for v in values]
            if any(v is not None for v in clean):
                out[str(name)] = clean
    return out


def _records(records: Any, x_key: str) -> tuple[list[float], dict[str, list[float | None]]]:
    """A list of {x_key: .., metric: ..} dicts as x values and one series per metric."""
    rows = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    keys = list(dict.fromkeys(k for r in rows for k in r if k != x_key))
    series = _numeric_series({k: [r.get(k) for r in rows] for k in keys})
    xs = [number(r.get(x_key)) for r in rows]
    return ([x if x is not None else i + 1 for i, x in enumerate(xs)], series)


def top_level_curves(stats: dict[str, Any]) -> dict[str, list[float | None]]:
    """Lists of >= 2 numbers stored beside the other fields (e.g. "finetune_loss")."""
    return _numeric_series({k: v for k, v in stats.items() if k not in FIGURE_KEYS
                            and isinstance(v, list) and len(v) >= 2
                            and all(number(x) is not None for x in v)})


def curves(ctx: dict[str, Any], stats: dict[str, Any]) -> Figure | None:
    raw = stats.get("curves") if isinstance(stats.get("curves"), dict) else {}
    series = {**_numeric_series(raw), **top_level_curves(stats)}
    xs: list[float] = []
    if not series:
        xs, series = _records(stats.get("history"), "epoch")
    if not series:
        return None
    xs = xs or list(range(1, max(len(v) for v in series.values()) + 1))
    best = number(raw.get("best_epoch"))  # 0-based index of the epoch whose weights were kept
    marker = xs[int(best)] if best is not None and 0 <= best < len(xs) else None
    data = {"x": xs, "x_label": "epoch", "series": series, "marker": marker}
    kept = " Dashed: the epoch whose weights were kept." if marker is not None else ""
    return _fig(ctx, "curves", "Training curves", data,
                caption="Per epoch, as recorded during training." + kept)


def rounds(ctx: dict[str, Any], stats: dict[str, Any]) -> Figure | None:
    xs, series = _records(stats.get("rounds"), "round")
    if not series:
        return None
    data = {"x": xs, "x_label": "pruning round", "series": series}
    return _fig(ctx, "curves", "Sparsity and accuracy over pruning rounds", data)


def masks(ctx: dict[str, Any], stats: dict[str, Any]) -> Figure | None:
    raw = stats.get("masks")
    if not isinstance(raw, dict):
        return None
    grids = []
    for name, rows in raw.items():
        if (isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows)
                and len({len(r) for r in rows}) == 1 and rows[0]):
            values = [[number(v) for v in r] for r in rows]
            if all(v is not None for r in values for v in r):
                grids.append({"name": str(name), "values": values})
    if not grids:
        return None
    return _fig(ctx, "mask_grid", "Weight masks", {"masks": grids[:MAX_PANELS]},
                caption="Kept weights (dark) per layer weight matrix, downsampled; rows are "
                        "output channels." + (f" First {MAX_PANELS} of {len(grids)} layers."
                                              if len(grids) > MAX_PANELS else ""))


def sensitivity(ctx: dict[str, Any], stats: dict[str, Any]) -> Figure | None:
    raw = stats.get("sensitivity")
    if isinstance(raw, dict):
        raw = [{"name": k, "metric_drop": v} for k, v in raw.items()]
    rows = [_sensitivity_row(r) for r in raw if isinstance(r, dict)
            and isinstance(r.get("name"), str)] if isinstance(raw, list) else []
    key = next((k for k in ("metric drop", "SQNR (dB)", "disagreement (%)")
                if any(r[k] is not None for r in rows)), None)
    if key is None:
        return None
    worst_first = -1 if key == "SQNR (dB)" else 1  # low SQNR is sensitive, high drop is
    rows.sort(key=lambda r: -worst_first * r[key] if r[key] is not None else math.inf)
    names, series = _series(rows, {k: k for k in ("metric drop", "SQNR (dB)",
                                                  "disagreement (%)")})
    top = [r["name"] for r in rows if r[key] is not None][:3]
    return _bars(ctx, "Per-layer sensitivity", names, series, "", separate=True,
                 highlight=top, callouts=[f"most sensitive ({key}): {', '.join(top)}"],
                 caption="Each layer compressed alone, sorted by " + key + ": metric (accuracy) "
                         "drop, output signal-to-quantization-noise ratio, top-1 "
                         "disagreement with the float model, where recorded.")


def _sensitivity_row(row: dict[str, Any]) -> dict[str, Any]:
    drop = number(row.get("metric_drop", row.get("accuracy_drop")))
    agreement = number(row.get("agreement"))
    return {"name": row["name"], "metric drop": drop, "SQNR (dB)": number(row.get("sqnr_db")),
            "disagreement (%)": None if agreement is None else 100 * (1 - agreement)}


def facts(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """Scalar fields and lists of names, as (label, text), for a stage's technique summary."""
    out = []
    plotted = FIGURE_KEYS | set(top_level_curves(stats))
    for key, value in stats.items():
        if key in plotted:
            continue
        label = str(key).replace("_", " ")
        if value is None or isinstance(value, str | int | float | bool):
            out.append((label, _cell(value)))
        elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            names = ", ".join(str(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
            out.append((label, f"{len(value)}: {names}" if value else "none"))
    return out


def layer_table(layers: list[dict[str, Any]], max_columns: int = 10) -> dict[str, Any]:
    """The scalar per-layer fields as {"columns": [...], "rows": [[cell, ...], ...]}."""
    columns = list(dict.fromkeys(
        k for la in layers for k, v in la.items() if k != "name" and _is_cell(v)))[:max_columns]
    rows = [[la["name"]] + [_cell(la.get(c)) for c in columns] for la in layers]
    return {"columns": ["layer", *columns], "rows": rows} if columns else {}


def _is_cell(value: Any) -> bool:
    """Scalars, and short lists of numbers such as a Tucker rank [2, 3]."""
    if isinstance(value, list):
        return 0 < len(value) <= 4 and all(number(v) is not None for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _cell(value: Any) -> str:
    if value is None or not _is_cell(value):
        return ""
    if isinstance(value, list):
        return "x".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
