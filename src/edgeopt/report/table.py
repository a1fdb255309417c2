"""The stage table as text cells, shared by the HTML report and the terminal (no heavy imports).

Works on normalized stages (:func:`edgeopt.report.load.normalize`): a missing value is "n/a".
"""

from __future__ import annotations

from typing import Any

from edgeopt.text import human, human_bytes

__all__ = ["COLUMNS", "NA", "human", "human_bytes", "percent", "summary_rows", "target_rows"]

COLUMNS = ("stage", "technique", "accuracy", "Δ acc", "size", "smaller", "stored", "latency",
           "speedup", "MACs", "params", "peak mem", "int8 kernels")
NA = "n/a"


def summary_rows(stages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One dict of cells per stage, keys in COLUMNS order."""
    return [_row(s) for s in stages]


def _row(s: dict[str, Any]) -> dict[str, str]:
    acc, drop, ratio = s.get("accuracy"), s.get("accuracy_drop"), s.get("size_ratio")
    latency = s.get("latency_ms")
    return {
        "stage": str(s.get("name", "?")),
        "technique": str(s.get("technique") or ""),
        "accuracy": _score_cell(s) if s.get("metric") not in (None, "top1")
        else NA if acc is None else percent(acc),
        "Δ acc": "" if drop is None else f"{0.0 - drop:+.2f} pt".replace("-0.00", "+0.00"),
        "size": NA if s.get("size_bytes") is None else human_bytes(s["size_bytes"]),
        "smaller": "" if ratio is None else f"{ratio:.2f}x",
        "stored": NA if s.get("stored_bytes") is None else human_bytes(s["stored_bytes"]),
        "latency": NA if latency is None else f"{latency:.3g} ms",
        "speedup": ", ".join(f"{v:.2f}x @{k}" for k, v in (s.get("speedup") or {}).items()),
        "MACs": NA if s.get("macs") is None else human(s["macs"]),
        "params": NA if s.get("params") is None else human(s["params"]),
        "peak mem": NA if s.get("peak_activation_bytes") is None
        else human_bytes(s["peak_activation_bytes"]),
        "int8 kernels": _kernels(s.get("runtime") or {}),
    }


def _score_cell(s: dict[str, Any]) -> str:
    """Runs scored by agreement, cosine or mse show that metric in the accuracy column."""
    metric, value = s["metric"], s.get("score")
    if value is None:
        return NA
    if metric == "agreement":
        return f"agree {percent(value)}"
    return f"cos {value:.4f}" if metric == "cosine" else f"mse {value:.3g}"


def percent(value: float) -> str:
    """Accuracy as percent: values in 0..1 are fractions, larger ones already percent."""
    return f"{100 * value:.2f} %" if abs(value) <= 1 else f"{value:.2f} %"


def _kernels(runtime: dict[str, Any]) -> str:
    try:
        int8 = sum((runtime.get("int8_ops") or {}).values())
        flt = sum((runtime.get("float_ops") or {}).values())
    except TypeError:
        return NA
    return f"{int8}/{int8 + flt}" if int8 + flt else ""


def target_rows(metrics: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """A run with a recipe `target:`: a line on the target's budgets and, per stage, its flash
    and RAM (estimated from the lowered integer graph) and whether it fits. ("", []) without."""
    target = metrics.get("target")
    if not isinstance(target, dict) or not target.get("name"):
        return "", []

    def size(value: Any) -> str:
        return NA if not isinstance(value, int | float) else human_bytes(value)

    budget = (f"flash {size(target.get('flash_bytes'))}, RAM {size(target.get('ram_bytes'))}"
              if target.get("flash_bytes") else "no flash / RAM budget")
    rows = []
    for stage in metrics.get("stages") or []:
        fit = stage.get("target_fit") if isinstance(stage.get("target_fit"), dict) else {}
        rows.append({"stage": str(stage.get("name", "?")), "flash": size(fit.get("flash_bytes")),
                     "RAM": size(fit.get("ram_bytes")),
                     "fits": {True: "yes", False: "no"}.get(fit.get("fits"), NA),
                     "note": str(fit.get("note", ""))})
    return f"{target['name']}: {target.get('description', '')}; {budget}.", rows
