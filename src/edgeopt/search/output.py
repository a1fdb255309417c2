"""What a search leaves: pareto.json (every trial, the front, the best), report.html (the
front plot and a table of trials) and best/ (the best policy run as a normal recipe)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from edgeopt.search.space import Policy
from edgeopt.search.study import OBJECTIVES, best_fitting, finished_trials

best_fitting_record = best_fitting


def trial_records(study: Any) -> list[dict[str, Any]]:
    """Every finished trial (another worker's running or queued ones are left out)."""
    out = []
    for trial in finished_trials(study):
        attrs = trial.user_attrs
        record = {"number": trial.number, "state": trial.state.name.lower(),
                  **{k: attrs.get(k) for k in (*OBJECTIVES, "macs", "fits", "seconds", "worker")},
                  "policy": attrs.get("policy"), "architecture": attrs.get("architecture")}
        if "error" in attrs:  # a failed trial: why
            record["error"] = attrs["error"]
        record["fits"] = bool(record["fits"])
        out.append(record)
    return out


def dominates(a: dict[str, Any], b: dict[str, Any],
              objectives: tuple[str, ...] = OBJECTIVES) -> bool:
    """`a` is no worse than `b` in every objective (accuracy up, costs down) and better in one.
    Only the study's objectives count: on an MCU target latency is recorded for every trial
    but is an objective only under a latency budget."""
    keys = [k for k in objectives if a.get(k) is not None and b.get(k) is not None]
    better = [(a[k] >= b[k]) if k == "accuracy" else (a[k] <= b[k]) for k in keys]
    strictly = [(a[k] > b[k]) if k == "accuracy" else (a[k] < b[k]) for k in keys]
    return all(better) and any(strictly)


def pareto_front(records: list[dict[str, Any]],
                 objectives: tuple[str, ...] = OBJECTIVES) -> list[dict[str, Any]]:
    """Measured trials that no other measured trial dominates (accuracy up, costs down)."""
    measured = [r for r in records if r.get("accuracy") is not None]
    front = [r for r in measured
             if not any(dominates(o, r, objectives) for o in measured if o is not r)]
    return sorted(front, key=lambda r: r["flash_bytes"])


def summary(records: list[dict[str, Any]], budget: dict[str, Any],
            best_run: dict[str, Any] | None, objectives: tuple[str, ...] = OBJECTIVES,
            metric: str = "top1") -> dict[str, Any]:
    """pareto.json's content; `metric` says what each record's "accuracy" is."""
    best = best_fitting(records)
    if best is not None and best_run is not None:
        best = {**best, **best_run}
    return {"budget": budget, "objectives": list(objectives), "metric": metric,
            "trials": records, "pareto": pareto_front(records, objectives), "best": best}


def write_pareto(folder: Path, content: dict[str, Any]) -> None:
    (folder / "pareto.json").write_text(json.dumps(content, indent=2))


def _front_png(content: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in content["trials"] if t.get("accuracy") is not None]
    front = content["pareto"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for fits, colour, label in ((True, "tab:blue", "fits"), (False, "tab:gray", "over budget")):
        pts = [t for t in trials if t["fits"] is fits]
        ax.scatter([t["flash_bytes"] / 1024 for t in pts], [100 * t["accuracy"] for t in pts],
                   c=colour, s=18, alpha=0.7, label=label)
    ax.plot([t["flash_bytes"] / 1024 for t in front], [100 * t["accuracy"] for t in front],
            "o-", c="tab:red", mfc="none", label="Pareto front")
    limit = content["budget"].get("flash_bytes")
    if limit:
        ax.axvline(limit / 1024, ls="--", c="k", lw=1, label="flash budget")
    ax.set_xlabel("flash (KiB, predicted)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _cell(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _spaces_html(content: dict[str, Any]) -> str:
    """The architecture level's space selection: one row per width x resolution space."""
    level = content.get("architecture")
    if not level:
        return ""
    rows = "".join(
        f"<tr class='{'front' if s['chosen'] else ''}'><td>{s['width_mult']:g}</td>"
        f"<td>{s['resolution']}</td><td>{s['fitting']} / {s['samples']}</td>"
        f"<td>{_cell(s['mean_macs_fitting'], 1e-6, 2)}</td>"
        f"<td>{_cell(s['mean_flash_bytes'], 1 / 1024)}</td></tr>" for s in level["spaces"])
    return (f"<h2>Architecture spaces ({html.escape(level['family'])})</h2><p>Random "
            "architectures of each space costed untrained; the shaded space, whose fitting "
            "samples have the most compute, was searched.</p><table><tr><th>width</th>"
            "<th>resolution</th><th>fitting</th><th>mean MMAC (fitting)</th>"
            f"<th>mean flash KiB</th></tr>{rows}</table>")


def write_report(folder: Path, content: dict[str, Any], title: str) -> None:
    front = {t["number"] for t in content["pareto"]}
    rows = []
    for t in content["trials"]:
        policy = t.get("policy") or {"bits": {}, "keep": {}}
        bits = " ".join(f"{b}" if b != 32 else "f" for b in policy["bits"].values())
        keep = " ".join(f"{k:g}" for k in policy["keep"].values())
        extras = Policy.from_dict(policy).extras().strip()
        arch = t.get("architecture")
        arch_text = "" if arch is None else (f"w{arch['width_mult']:g} r{arch['resolution']} "
                                             f"d{arch['depth']} k{arch['kernel']}")
        rows.append(
            f"<tr class='{'front' if t['number'] in front else ''}'><td>{t['number']}</td>"
            f"<td>{t['state']}</td><td>{_cell(t['accuracy'], 100, 2)}</td>"
            f"<td>{_cell(t['flash_bytes'], 1 / 1024)}</td><td>{_cell(t['ram_bytes'], 1 / 1024)}</td>"
            f"<td>{_cell(t['latency_ms'], 1, 3)}</td><td>{'yes' if t['fits'] else 'no'}</td>"
            f"<td>{html.escape(bits)}</td><td>{html.escape(keep)}</td><td>{extras}</td>"
            f"<td>{html.escape(arch_text)}</td></tr>")
    best = content["best"]
    best_line = ("no trial fits the budget" if best is None else
                 f"best fitting trial #{best['number']}: validation {100 * best['accuracy']:.2f}%"
                 + (f", test {100 * best['test_accuracy']:.2f}% (run folder "
                    f"<a href='best/report.html'>best/</a>)" if best.get("test_accuracy")
                    is not None else ""))
    budget = ", ".join(f"{k} {v}" for k, v in content["budget"].items() if v is not None)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}tr.front{{background:#fde8e8}}
</style></head><body><h1>{html.escape(title)}</h1><p>budget: {html.escape(budget)}</p>
<p>{best_line}</p><img alt="accuracy against flash" src="data:image/png;base64,{_front_png(content)}">
<h2>Trials</h2><p>Rows on the Pareto front are shaded. Over-budget trials are not trained (no
accuracy). Bits per layer (f: float) and channel keep ratio per group, in model order; C16:
weights clustered into 16 values per layer, E0.8: layers factorized keeping 80% of their
energy (SVD); architecture: width multiplier, input resolution, depth, kernel.</p>
<table><tr><th>#</th><th>state</th><th>val acc %</th><th>flash KiB</th><th>RAM KiB</th>
<th>latency ms</th><th>fits</th><th>bits</th><th>keep</th><th>shared / rank</th>
<th>architecture</th></tr>
{''.join(rows)}</table>{_spaces_html(content)}
</body></html>"""
    (folder / "report.html").write_text(page)
