"""The report in a real browser: headless Chromium renders it without console errors, with the
sections the run calls for, at laptop and phone widths, and a screenshot is saved.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``); skipped with that reason where they are not installed. Set
``EDGEOPT_SCREENSHOT_DIR`` to keep the screenshots (CI artifacts), and
``EDGEOPT_REQUIRE_BROWSER=1`` to fail rather than skip when Chromium is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_samples import default_metrics

from edgeopt.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
REQUIRED = bool(os.environ.get("EDGEOPT_REQUIRE_BROWSER"))  # CI: fail instead of skipping
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED,
    reason="headless Chromium is not installed; install it with "
           "`apt-get install -y chromium chromium-driver`")


def open_in_chromium(page: Path, tmp: Path, *, width: int = 1280, height: int = 2000,
                     extra: tuple[str, ...] | list[str] = ()) -> tuple[str, list[str], Path]:
    """Load `page` with the network cut off; return (DOM after load, console lines, PNG)."""
    assert CHROMIUM, "EDGEOPT_REQUIRE_BROWSER is set but chromium is not on PATH"
    shot = tmp / f"{tmp.name}-{width}px.png"  # tmp is per test: names stay unique
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           f"--window-size={width},{height}", f"--screenshot={shot}", "--dump-dom", *extra,
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if os.environ.get("EDGEOPT_SCREENSHOT_DIR") and shot.exists():
        shutil.copy(shot, Path(os.environ["EDGEOPT_SCREENSHOT_DIR"]) / shot.name)
    return proc.stdout, console, shot


def ink(png: Path) -> float:
    """Fraction of the screenshot's pixels that are not white."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    return float((pixels.min(axis=-1) < 0.95).mean())


def section_ids(dom: str) -> list[str]:
    return re.findall(r'<section id="([\w-]+)"', dom)


def test_console_errors_are_detected(tmp_path):
    """The check itself: a page with a script error and a fetch is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><link rel=icon href='data:,'><p>x</p>"
                    "<script>console.error('boom'); undefinedFunction();</script>"
                    "<img src='https://example.invalid/x.png'>")
    _, console, _ = open_in_chromium(page, tmp_path, width=400, height=300)
    text = "\n".join(console)
    assert "boom" in text and "undefinedFunction" in text


def test_full_run_report_renders_cleanly(tmp_path, full_report):
    dom, console, shot = open_in_chromium(full_report, tmp_path)
    assert console == []
    assert section_ids(dom) == [
        "summary", "tradeoff", "sparsity", "stage-pruned", "stage-distilled", "stage-int8-qat",
        "stage-lowrank", "stage-clustered", "warnings"]
    assert dom.count("<svg ") == 20
    assert shot.stat().st_size > 20_000 and ink(shot) > 0.05


def test_default_run_report_renders_cleanly(tmp_path):
    page = write_report(default_metrics(), tmp_path / "report.html")
    dom, console, shot = open_in_chromium(page, tmp_path, height=1200)
    assert console == []
    assert section_ids(dom) == ["summary", "tradeoff", "stage-int8", "warnings"]
    assert ink(shot) > 0.03


def test_report_fits_a_phone_screen(tmp_path, full_report):
    """In a 390 px wide frame the page does not scroll sideways (wide tables scroll inside
    their box). Headless Chromium's window is at least 500 px wide, hence the frame."""
    shutil.copy(full_report, tmp_path / "report.html")
    probe = tmp_path / "phone.html"
    probe.write_text(
        "<!doctype html><link rel=icon href='data:,'><body style=margin:0>"
        "<iframe id=f src=report.html style='width:390px;height:844px;border:0'></iframe>"
        "<script>document.getElementById('f').onload = function () {"
        " var d = this.contentDocument.documentElement;"
        " document.body.dataset.width = d.scrollWidth + '/' + d.clientWidth; };</script>")
    dom, console, shot = open_in_chromium(probe, tmp_path, width=500, height=844,
                                          extra=["--allow-file-access-from-files"])
    assert console == []
    scroll, client = map(int, re.search(r'data-width="(\d+)/(\d+)"', dom).groups())
    assert client == 390 and scroll <= client
    assert ink(shot) > 0.03
