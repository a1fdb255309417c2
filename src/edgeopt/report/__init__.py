"""The run report: one self-contained HTML page rendered from metrics (never from prints)."""

from edgeopt.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
