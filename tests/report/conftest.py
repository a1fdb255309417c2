import pytest


@pytest.fixture
def fast_figures(monkeypatch):
    """Stand-in SVGs where a test is about the page, not the drawing (keeps the suite fast)."""
    from edgeopt.report import figures

    monkeypatch.setattr(figures, "render_svg",
                        lambda spec: f'<svg role="img" aria-label="{spec["id"]}"></svg>')


@pytest.fixture(scope="session")
def full_report(tmp_path_factory):
    """The report of the sample full run, drawn once per session (drawing takes ~2 s)."""
    from report_samples import full_metrics

    from edgeopt.report import write_report

    return write_report(full_metrics(), tmp_path_factory.mktemp("full") / "report.html")
