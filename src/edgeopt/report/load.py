"""Read a run folder for the report, and make any metrics dict safe to render.

A finished run has ``metrics.json``. An interrupted one may have only exported ``*.onnx`` files
(a killed run's scratch folder ``.NAME.*.partial``) or stages with fields missing; an older
version may lack fields. All of these render: what is there is shown, what is not is listed in
``RunData.problems``. A folder with neither metrics nor ONNX files is not a run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError

REQUIRED = ("accuracy", "size_bytes", "latency_ms", "onnx")
NUMBERS = ("accuracy", "size_bytes", "stored_bytes", "latency_ms", "params", "macs",
           "peak_activation_bytes", "accuracy_drop", "size_ratio", "score")


class RunFolderError(EdgeoptError, ValueError):
    """A folder given as a run folder is not one (no metrics.json and no exported model)."""


@dataclasses.dataclass
class RunData:
    """Normalized metrics plus, in words, what a complete run would have and this one lacks."""

    metrics: dict[str, Any]
    problems: list[str]
    folder: Path | None = None

    @property
    def complete(self) -> bool:
        return not self.problems


def load_run(folder: str | Path) -> RunData:
    """Read `folder` (the ``--out`` of ``edgeopt optimize``); raise RunFolderError if not one.

    When `folder` holds no finished run but an interrupted run of it left its scratch folder
    beside it, that is read instead: the stages that finished."""
    path = Path(folder)
    partial = _interrupted(path)
    if partial is not None:
        run = load_run(partial)
        run.problems.insert(0, f"the run writing {str(path)!r} did not finish; showing the "
                               f"stages that finished, from {str(partial)!r} (`edgeopt optimize "
                               f"RECIPE --out {path} --resume` continues it)")
        return run
    if not path.is_dir():
        what = "it is a file" if path.exists() else "no such directory"
        raise RunFolderError(f"{str(path)!r} is not a run folder: {what}; pass the --out "
                             f"folder of `edgeopt optimize`.{_partial_hint(path)}")
    metrics_file = path / "metrics.json"
    onnx = sorted(path.glob("*.onnx"), key=lambda p: (p.stat().st_mtime, p.name))
    if not metrics_file.is_file():
        if not onnx:
            raise RunFolderError(
                f"{str(path)!r} is not a run folder: it has no metrics.json and no exported "
                f"model; pass the --out folder of `edgeopt optimize`.{_partial_hint(path)}")
        return _from_files(path, onnx, "metrics.json is missing: the run did not finish")
    try:
        raw = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if not onnx:
            raise RunFolderError(f"{str(metrics_file)!r} cannot be read as JSON ({exc}); "
                                 "rerun `edgeopt optimize` to recreate it.") from None
        return _from_files(path, onnx, f"metrics.json is unreadable ({exc})")
    if isinstance(raw, list):  # the oldest format: a bare list of stages
        raw = {"stages": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise RunFolderError(f"{str(metrics_file)!r} is not edgeopt metrics: expected an object "
                             "with a list of 'stages'.")
    run = normalize(raw)
    run.folder = path
    for stage in run.metrics["stages"]:
        onnx_name = stage.get("onnx")
        if isinstance(onnx_name, str) and not (path / onnx_name).is_file():
            run.problems.append(f"stage {stage['name']}: {onnx_name} is missing from the folder")
    return run


def _interrupted(path: Path) -> Path | None:
    """The scratch folder of an interrupted run of `path`, when `path` has no metrics.json and
    the scratch folder has (edgeopt.recipes.journal writes it after every stage)."""
    if (path / "metrics.json").is_file() or not path.parent.is_dir():
        return None
    found = [p for p in path.parent.glob(f".{path.name}.*.partial") if (p / "metrics.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _partial_hint(path: Path) -> str:
    parent = path.parent if path.parent.is_dir() else None
    partial = sorted(parent.glob(f".{path.name}.*.partial")) if parent else []
    if not partial:
        return ""
    return f" An interrupted run left {str(partial[-1])!r}; run `edgeopt report` on that."


def _from_files(path: Path, onnx: list[Path], why: str) -> RunData:
    stages = []
    for file in onnx:
        data = file.with_name(file.name + ".data")
        size = file.stat().st_size + (data.stat().st_size if data.is_file() else 0)
        stages.append({"name": file.stem, "onnx": file.name, "size_bytes": size})
    run = normalize({"stages": stages})
    run.problems.insert(0, why + "; showing the exported models only")
    run.folder = path
    return run


def plain(value: Any) -> Any:
    """JSON fallback: numpy/torch scalars and arrays as numbers and lists, anything else str."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def normalize(raw: dict[str, Any]) -> RunData:
    """A copy of `raw` in which every field the report reads has the right type or is None.

    `raw` first goes through JSON (tuples become lists, numpy scalars numbers), so a report
    rendered at the end of a run and one rebuilt later from metrics.json are the same.
    """
    raw = json.loads(json.dumps(raw, default=plain))
    problems: list[str] = []
    stages = []
    for i, item in enumerate(raw.get("stages") or []):
        if not isinstance(item, dict):
            problems.append(f"stage #{i + 1} is not a mapping; skipped")
            continue
        stages.append(_stage(item, i, problems))
    metrics = dict(raw)
    metrics["stages"] = stages
    metrics["warnings"] = [str(w) for w in _list(raw.get("warnings"))]
    metrics["unfinished"] = _unfinished(raw, stages)
    problems += [f"stage {name} (in the recipe) did not finish" for name in metrics["unfinished"]]
    return RunData(metrics=metrics, problems=problems)


def _stage(item: dict[str, Any], index: int, problems: list[str]) -> dict[str, Any]:
    stage = dict(item)
    if not isinstance(stage.get("name"), str) or not stage["name"]:
        stage["name"] = f"stage {index + 1}"
        problems.append(f"{stage['name']} has no name")
    for key in NUMBERS:
        stage[key] = number(stage.get(key))
    stage["onnx"] = stage["onnx"] if isinstance(stage.get("onnx"), str) else None
    speedup = stage.get("speedup") if isinstance(stage.get("speedup"), dict) else {}
    stage["speedup"] = {str(k): v for k, v in speedup.items() if number(v) is not None}
    for key in ("runtime", "technique_stats"):
        stage[key] = stage[key] if isinstance(stage.get(key), dict) else {}
    stage["warnings"] = [str(w) for w in _list(stage.get("warnings"))]
    stage["missing"] = [key for key in REQUIRED if stage.get(key) is None]
    if stage["missing"]:
        problems.append(f"stage {stage['name']}: no {', '.join(stage['missing'])} recorded")
    return stage


def _unfinished(raw: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    recipe = raw.get("recipe")
    planned = recipe.get("stages") if isinstance(recipe, dict) else None
    done = {s["name"] for s in stages}
    names = []
    for item in _list(planned):
        if isinstance(item, dict):
            name = item.get("name", item.get("technique"))
            if isinstance(name, str) and name not in done:
                names.append(name)
    return names


def number(value: Any) -> float | int | None:
    """`value` if it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def rebuild_report(folder: str | Path) -> RunData:
    """Re-render ``report.html`` and ``figures.json`` in `folder` from what the run left."""
    from edgeopt.report.html import write_report

    run = load_run(folder)
    write_report(run, (run.folder or Path(folder)) / "report.html")
    return run
