"""summary.md: the stages as a table, then what did not materialize, then per-stage details."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeopt.report.table import summary_rows, target_rows
from edgeopt.text import markdown_table

if TYPE_CHECKING:
    from edgeopt.recipes.run import RunResult


def render_summary(result: RunResult) -> str:
    data = result.to_dict()
    parts = [f"# edgeopt run: {data['model']} on {data['data']}", "",
             markdown_table(summary_rows(data["stages"])), "",
             "Accuracy on the test split and latency (median, batch 1) are measured in ONNX "
             "Runtime on the exported files; speedup is against the baseline, timed "
             "interleaved in one run. `int8 kernels` counts integer compute ops among all "
             "compute ops of the runtime's optimized graph.", ""]
    parts += _target_section(data)
    parts += ["## Warnings", ""] + ([f"- {w}" for w in data["warnings"]] or ["- none"]) + [""]
    for stage in data["stages"]:
        parts += [f"## {stage['name']}: per-layer profile", "", stage.get("profile_table", ""), ""]
        quant = stage.get("technique_stats", {}).get("quant")
        if quant:
            parts += [f"## {stage['name']}: quantization", "",
                      f"- batch norms folded: {quant['folded_batch_norms']}",
                      f"- integer weight layers: {len(quant['quantized_layers'])}",
                      f"- layers left in float: {', '.join(quant['float_layers']) or 'none'}",
                      f"- activation quantizers: {quant['activation_quantizers']}",
                      f"- calibration samples: {quant['calibration_samples']}", ""]
        speed = stage.get("technique_stats", {}).get("speed")
        if speed:
            tried = ", ".join(f"{k} {v:.2f}x" for k, v in speed["speedups"].items())
            parts += [f"- speed guard kept: **{speed['chosen']}** (tried: {tried})", ""]
    return "\n".join(parts)


def _target_section(data: dict) -> list[str]:
    """Whether each stage fits the recipe's target (flash and RAM estimated from the lowered
    integer graph; `edgeopt deploy` measures the built image)."""
    line, rows = target_rows(data)
    if not rows:
        return []
    return [f"## Target {line}", "", markdown_table(rows), ""]
