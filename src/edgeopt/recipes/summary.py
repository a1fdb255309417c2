"""summary.md: the stages as a table, then what did not materialize, then per-stage details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeopt.recipes.run import RunResult


def stage_rows(stages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Human-readable cells for each stage (shared by summary.md, the terminal and the report)."""
    rows = []
    for s in stages:
        speed = ", ".join(f"{v:.2f}x@{k}" for k, v in s.get("speedup", {}).items())
        acc = s.get("accuracy")
        drop = s.get("accuracy_drop")
        rows.append({
            "stage": s["name"],
            "accuracy": "n/a" if acc is None else f"{100 * acc:.2f} %",
            "drop": "" if drop is None else f"{drop:+.2f}",
            "size": _bytes(s.get("size_bytes")),
            "latency": f"{s['latency_ms']:.3f} ms" if s.get("latency_ms") is not None else "n/a",
            "speedup": speed,
            "MACs": f"{s.get('macs', 0):,}",
            "params": f"{s.get('params', 0):,}",
            "peak act.": _bytes(s.get("peak_activation_bytes")),
            "int8 kernels": _kernels(s.get("runtime", {})),
        })
    return rows


def _bytes(n: Any) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _kernels(runtime: dict[str, Any]) -> str:
    int8 = sum(runtime.get("int8_ops", {}).values())
    flt = sum(runtime.get("float_ops", {}).values())
    return f"{int8}/{int8 + flt}" if int8 + flt else ""


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)


def render_summary(result: RunResult) -> str:
    data = result.to_dict()
    parts = [f"# edgeopt run: {data['model']} on {data['data']}", "",
             markdown_table(stage_rows(data["stages"])), "",
             "Accuracy on the test split and latency (median, batch 1) are measured in ONNX "
             "Runtime on the exported files; speedup is against the baseline, timed "
             "interleaved in one run. `int8 kernels` counts integer compute ops among all "
             "compute ops of the runtime's optimized graph.", ""]
    parts += ["## Warnings", ""] + ([f"- {w}" for w in data["warnings"]] or ["- none"]) + [""]
    for stage in data["stages"]:
        quant = stage.get("technique_stats", {}).get("quant")
        if quant:
            parts += [f"## {stage['name']}: quantization", "",
                      f"- batch norms folded: {quant['folded_batch_norms']}",
                      f"- integer weight layers: {len(quant['quantized_layers'])}",
                      f"- layers left in float: {', '.join(quant['float_layers']) or 'none'}",
                      f"- activation quantizers: {quant['activation_quantizers']}",
                      f"- calibration samples: {quant['calibration_samples']}", ""]
    return "\n".join(parts)
