"""Numbers and tables for people: one place for every summary, report and CLI table."""

from __future__ import annotations


def human(value: float, unit: str = "") -> str:
    """1234 -> '1.23k', 5.6e6 -> '5.6M'; with unit 'B', bytes: 2048 -> '2.0 KiB'."""
    if unit == "B":
        return human_bytes(value)
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.3g}{prefix}"
        value /= 1000
    return f"{value:.3g}T"


def human_bytes(value: float) -> str:
    """2048 -> '2.0 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def markdown_table(rows: list[dict[str, str]], align: dict[str, str] | None = None) -> str:
    """A GitHub-flavoured markdown table of rows sharing the same keys; `align` maps a column
    to 'right' where numbers should line up."""
    if not rows:
        return ""
    head = list(rows[0])
    rule = ["---:" if (align or {}).get(h) == "right" else "---" for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)
