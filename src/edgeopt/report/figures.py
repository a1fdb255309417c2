"""Figure spec -> inline SVG string; one drawing function per ``kind`` (data fields below).

- ``tradeoff``: stages, x, y, pareto (bools), x_label, y_label
- ``heatmap``: rows, columns (labels or None), values (rows x columns, None = blank), vmin,
  vmax, colorbar, x_label, percent (annotate cells as %)
- ``curves``: x, x_label, series {name: [values]}, marker (x of a dashed line, e.g. the best
  epoch, or None); series sharing a unit (loss, acc, mse, ...) share a panel
- ``hist_grid``: layers [{name, edges, counts, rms, outlier}], shown [names], x_label
- ``mask_grid``: masks [{name, values (2-D)}]
- ``layer_bars``: layers, series {label: [values]}, unit, highlight [names], separate (one
  panel per series instead of grouped bars)

Matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` only: no pyplot, so
rendering is headless (Agg-free SVG backend) and never changes a user's interactive backend.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from typing import Any

_RC = {"svg.fonttype": "none", "svg.hashsalt": "edgeopt", "font.size": 8.5,
       "axes.titlesize": 9, "axes.labelsize": 8.5, "axes.spines.top": False,
       "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
       "legend.fontsize": 8, "legend.frameon": False, "font.family": "DejaVu Sans"}
ACCENT, BASE, BAD = "#d95f02", "#1b6ca8", "#c0392b"
PALETTE = ["#1b6ca8", "#d95f02", "#1a9850", "#7570b3", "#e7298a", "#666666"]


def render_svg(spec: dict[str, Any]) -> str:
    """The figure of `spec` as an ``<svg>`` element whose ids are prefixed with its id."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(layout="constrained")
        KINDS[spec["kind"]](fig, spec["data"])
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return inline_svg(buf.getvalue(), f"{spec['id']}-", spec.get("title", ""))


def inline_svg(svg: str, prefix: str, label: str) -> str:
    """Strip the XML prolog, namespace ids per figure, scale to the page width."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\bid="', f'id="{prefix}', svg)
    svg = svg.replace('href="#', f'href="#{prefix}').replace("url(#", f"url(#{prefix}")
    size = re.search(r'<svg[^>]*?width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    width = float(size.group(1)) if size else 460.0
    svg = re.sub(r'(<svg[^>]*?)width="[\d.]+pt" height="[\d.]+pt"',
                 rf'\1width="100%" style="max-width:{width:.0f}pt"', svg, count=1)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1).strip()


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _nan(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def tradeoff(fig: Any, data: dict[str, Any]) -> None:
    fig.set_size_inches(4.6, 3.2)
    ax = fig.add_subplot()
    xs, ys, front = data["x"], data["y"], data["pareto"]
    ax.scatter(xs, ys, s=36, color=BASE, zorder=3)
    pts = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=ACCENT, lw=1.5, zorder=2,
            drawstyle="steps-post" if len(pts) > 1 else "default", label="Pareto front")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=140, facecolors="none",
               edgecolors=ACCENT, lw=1.8, zorder=4)
    for name, x, y in zip(data["stages"], xs, ys):
        ax.annotate(_short(name, 18), (x, y), xytext=(5, 4), textcoords="offset points")
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    span = (max(ys) - min(ys)) or 1.0
    ax.set_ylim(min(ys) - 0.25 * span, max(ys) + 0.35 * span)
    ax.set_xlabel(data["x_label"])
    ax.set_ylabel(data["y_label"])
    ax.legend(loc="lower right")


def heatmap(fig: Any, data: dict[str, Any]) -> None:
    import numpy as np

    rows, values = data["rows"], np.array([_nan(r) for r in data["values"]], dtype=float)
    cols = data.get("columns")
    fig.set_size_inches(min(7.0, 3.2 + 0.6 * values.shape[1]) if cols else 6.4,
                        min(11.0, 1.2 + 0.24 * len(rows)))
    ax = fig.add_subplot()
    ax.grid(False)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis",
                      vmin=data["vmin"], vmax=data["vmax"], interpolation="nearest")
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows] if len(rows) <= 60 else None)
    if cols:
        ax.set_xticks(range(len(cols)), [_short(c, 14) for c in cols])
    ax.set_xlabel(data["x_label"])
    fig.colorbar(image, ax=ax, label=data["colorbar"], shrink=0.8)
    if data.get("percent") and values.size <= 150:
        for (i, j), v in np.ndenumerate(values):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.0f}%", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * data["vmax"] else "black")


def _unit(name: str) -> str:
    low = name.lower()
    for key in ("loss", "acc", "mse", "sparsity", "sqnr", "lr"):
        if key in low:
            return key
    return name


def curves(fig: Any, data: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[str]] = {}
    for name in data["series"]:
        groups.setdefault(_unit(name), []).append(name)
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig.set_size_inches(2.6 * ncols + 0.6, 2.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (unit, names) in zip(axes, groups.items()):
        for color, name in zip(PALETTE * 3, names):
            ys = _nan(data["series"][name])
            ax.plot(data["x"][:len(ys)], ys, marker="o", ms=3, color=color, label=name)
        positive = [v for n in names for v in data["series"][n] if v is not None]
        if unit == "mse" and positive and min(positive) > 0 and max(positive) / min(positive) > 50:
            ax.set_yscale("log")
        if data.get("marker") is not None:
            ax.axvline(data["marker"], color="#888888", ls="--", lw=1)
        ax.set_xlabel(data["x_label"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(unit if len(names) > 1 else names[0])
        if len(names) > 2:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
        elif len(names) > 1:
            ax.legend()
    for ax in axes[len(groups):]:
        ax.set_visible(False)


def hist_grid(fig: Any, data: dict[str, Any]) -> None:
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    shown = set(data["shown"])
    layers = [la for la in data["layers"] if la["name"] in shown]
    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig.set_size_inches(2.3 * ncols + 0.4, 1.6 * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, layer in zip(axes, layers):
        color = BAD if layer["outlier"] else BASE
        ax.stairs(layer["counts"], layer["edges"], fill=True, color=color, alpha=0.75)
        ax.set_title(_short(layer["name"], 22) + ("  (outlier)" if layer["outlier"] else ""),
                     color=color, fontsize=8)
        ax.text(0.98, 0.95, f"rms {layer['rms']:.2g}", transform=ax.transAxes, ha="right",
                va="top", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4, symmetric=True))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.set_yticks([])
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel(data["x_label"], fontsize=8.5)


def mask_grid(fig: Any, data: dict[str, Any]) -> None:
    grids = data["masks"]
    ncols = min(4, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    fig.set_size_inches(1.8 * ncols + 0.4, 1.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, grid in zip(axes, grids):
        values = grid["values"]
        kept = sum(map(sum, values)) / (len(values) * len(values[0]))
        ax.imshow(values, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{_short(grid['name'], 18)}\n{100 * (1 - kept):.0f}% zero", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    for ax in axes[len(grids):]:
        ax.set_visible(False)


def layer_bars(fig: Any, data: dict[str, Any]) -> None:
    names, series = data["layers"], data["series"]
    separate = data.get("separate") and len(series) > 1
    per_row = 1 if separate else len(series)
    fig.set_size_inches(6.4 if separate or len(series) > 1 else 5.2,
                        min(12.0, 0.9 + 0.17 * len(names) * max(1.0, 0.7 * per_row)))
    axes = fig.subplots(1, len(series) if separate else 1, sharey=True, squeeze=False).ravel()
    height = 0.8 / per_row
    for i, (label, values) in enumerate(series.items()):
        ax = axes[i] if separate else axes[0]
        offset = 0.0 if separate else (i - (per_row - 1) / 2) * height
        ys = [k + offset for k in range(len(names))]
        ax.barh(ys, _nan(values), height=height, label=label,
                color=PALETTE[i % len(PALETTE)])
        if separate:
            ax.set_xlabel(label)
    _bar_axes(axes, names, data, separate)


def _bar_axes(axes: Any, names: list[str], data: dict[str, Any], separate: bool) -> None:
    ax = axes[0]
    ax.set_yticks(range(len(names)), [_short(n) for n in names])
    ax.invert_yaxis()
    for tick, name in zip(ax.get_yticklabels(), names):
        if name in data.get("highlight", []):
            tick.set_color(BAD)
            tick.set_fontweight("bold")
    panels = [[v] for v in data["series"].values()] if separate else [
        list(data["series"].values())]
    for each, panel in zip(axes, panels):
        each.grid(axis="y", visible=False)
        values = [v for vs in panel for v in vs if v is not None]
        if values and min(values) > 0 and max(values) / min(values) > 100:
            each.set_xscale("log")
        elif values and min(values) >= 0:
            each.set_xlim(0, max(values) * 1.05 or 1.0)  # all zero still reads as zero
    if not separate:
        ax.set_xlabel(data["unit"])
        if len(data["series"]) > 1:
            ax.legend(loc="lower right")


KINDS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "tradeoff": tradeoff, "heatmap": heatmap, "curves": curves, "hist_grid": hist_grid,
    "mask_grid": mask_grid, "layer_bars": layer_bars,
}
