"""Atomic writes: all or nothing, and never a temporary file left behind."""

from __future__ import annotations

import pytest

from edgeopt.atomic import atomic_dir, atomic_open, ensure_writable_dir, write_bytes, write_text
from edgeopt.errors import ConfigError, OutputError


def test_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "f.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert write_bytes(tmp_path / "g.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_write_to_new_path_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "new.bin") as handle:
        handle.write(b"x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_all_or_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), atomic_dir(out) as staging:
        (staging / "metrics.json").write_text("{}")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as staging:
        (staging / "metrics.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "m.onnx").write_bytes(b"1")
    assert (out / "metrics.json").read_text() == "{}" and (out / "sub" / "m.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_dir_merges_into_existing_directory(tmp_path):
    out = tmp_path / "run"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    (out / "metrics.json").write_text("stale")
    with atomic_dir(out) as staging:
        (staging / "metrics.json").write_text("new")
        (staging / "sub").mkdir()
        (staging / "sub" / "x").write_text("x")
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "metrics.json").read_text() == "new" and (out / "sub" / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_unwritable_location_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot be written"):
        ensure_writable_dir(blocker / "sub")
    with pytest.raises(OutputError):
        write_text(blocker / "x.txt", "x")
    with pytest.raises(ConfigError, match="mode"):
        with atomic_open(tmp_path / "y", "a"):
            pass
