"""The per-layer profile as a compact markdown table (for run summaries and reports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeopt.text import human

if TYPE_CHECKING:
    from edgeopt.profile.layers import ModelProfile


def markdown_table(profile: ModelProfile, *, max_rows: int = 40) -> str:
    """Rows in execution order; beyond `max_rows`, the layers with the most MACs are kept."""
    layers = list(profile.layers)
    hidden = 0
    if len(layers) > max_rows:
        keep = {id(row) for row in sorted(layers, key=lambda r: r.macs, reverse=True)[:max_rows]}
        hidden = len(layers) - max_rows
        layers = [row for row in layers if id(row) in keep]
    lines = [
        "| layer | type | params | MACs | output |",
        "|---|---|---:|---:|---|",
    ]
    for row in layers:
        shape = "×".join(str(d) for d in row.output_shape)
        lines.append(
            f"| `{row.name}` | {row.type} | {human(row.params)} | {human(row.macs)} | {shape} |"
        )
    if hidden:
        lines.append(f"| … {hidden} smaller layers | | | | |")
    lines.append(
        f"| **total** | | **{human(profile.params)}** ({human(profile.param_bytes, 'B')}) "
        f"| **{human(profile.macs)}** | peak act. {human(profile.peak_activation_bytes, 'B')} "
        f"({profile.activation_source}) |"
    )
    return "\n".join(lines)


render_markdown = markdown_table  # the name the CLI and run summary use
