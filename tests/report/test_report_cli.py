"""`edgeopt report DIR` and the end-of-run stage table in the terminal."""

import json

from click.testing import CliRunner
from report_samples import default_metrics, full_metrics

from edgeopt.cli import _print_stages, main


def test_report_rebuilds_the_page(tmp_path, fast_figures):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(default_metrics()))
    result = CliRunner().invoke(main, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"report: {folder / 'report.html'}" in result.stdout
    assert "<h3>Quantization</h3>" in (folder / "report.html").read_text()
    assert (folder / "figures.json").is_file()


def test_report_notes_what_an_interrupted_run_lacks(tmp_path, fast_figures):
    folder = tmp_path / ".run.abc.partial"
    folder.mkdir()
    (folder / "baseline.onnx").write_bytes(b"onnx")
    result = CliRunner().invoke(main, ["report", str(folder)])
    assert result.exit_code == 0
    assert "note: metrics.json is missing" in result.stderr
    assert "Incomplete run" in (folder / "report.html").read_text()


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    result = CliRunner().invoke(main, ["report", str(tmp_path / "notes")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "not a run folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["readme.txt"]
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert missing.exit_code == 2 and "no such directory" in missing.stderr
    assert not (tmp_path / "missing").exists()


def test_report_is_listed_in_help():
    result = CliRunner().invoke(main, ["--help"])
    assert "report" in result.output and "Rebuild RUN_DIR/report.html" in result.output


def test_stage_table_lists_stages_warnings_and_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    _print_stages(full_metrics(), tmp_path)
    out = capsys.readouterr().out
    for name in ("baseline", "pruned", "distilled", "int8_qat", "lowrank", "clustered"):
        assert name in out
    assert "98.29 %" in out and "5.36x" in out and "peak mem" in out
    assert "warning: clustered: not faster than baseline" in out
    assert f"report: {tmp_path / 'report.html'}" in out


def test_stage_table_survives_missing_fields(tmp_path, capsys):
    _print_stages({"stages": [{"name": "baseline"}]}, tmp_path)
    out = capsys.readouterr().out
    assert "baseline" in out and "n/a" in out


def test_stage_table_keeps_the_key_columns_in_a_narrow_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _print_stages(full_metrics(), tmp_path)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    header = next(line for line in out.splitlines() if "stage" in line)
    for column in ("accuracy", "size", "latency", "speedup"):
        assert column in header
    assert "technique" not in header and "98.29 %" in out and "0.152 ms" in out
