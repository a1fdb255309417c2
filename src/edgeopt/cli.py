"""The command line: a thin layer over the API. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from edgeopt import __version__


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input: one 'error:' line on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgeopt.errors import EdgeoptError

        try:
            return func(*args, **kwargs)
        except EdgeoptError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class _Group(click.Group):
    """Usage errors too end as one `error:` line and exit code 2 (not click's usage block)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()} (see 'edgeopt --help')", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
def main() -> None:
    """edgeopt: compress PyTorch models for edge devices, measured on ONNX Runtime."""


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder to write (metrics.json, summary.md, report.html, *.onnx).")
@click.option("--quiet", is_flag=True, help="No progress bars or stage table.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run of the same RECIPE into DIR from its last "
                   "finished stage or epoch.")
@_user_errors
def optimize(recipe: Path | None, out_dir: Path, quiet: bool, resume: bool) -> None:
    """Run RECIPE (YAML); with none, the built-in default (ResNet-8 on MNIST, fp32 vs int8)."""
    from edgeopt import interrupt
    from edgeopt.recipes import run_recipe

    try:
        with interrupt.sigint_recorded():
            result = run_recipe(recipe, out_dir, progress=not quiet, resume=resume)
    except KeyboardInterrupt:
        again = " ".join(str(a) for a in (recipe or "", "--out", out_dir) if a)
        click.echo(f"error: interrupted; `edgeopt optimize {again} --resume` continues from the "
                   "last finished stage or epoch.", err=True)
        sys.exit(130)
    if not quiet:
        _print_stages(result.to_dict(), out_dir)


# Terminal columns, most important first: the narrower the terminal, the fewer are shown.
_COLUMN_PRIORITY = ("stage", "accuracy", "Δ acc", "size", "latency", "speedup", "smaller",
                    "stored", "peak mem", "MACs", "int8 kernels", "params", "technique")


def _print_stages(metrics: dict[str, Any], out_dir: Path) -> None:
    """The end-of-run summary: the stage table, the warnings and where the report is."""
    from rich.console import Console
    from rich.table import Table

    from edgeopt.report.load import normalize
    from edgeopt.report.table import COLUMNS, NA, summary_rows

    run = normalize(metrics)
    stages = run.metrics["stages"]
    rows = summary_rows(stages)
    console = Console()
    columns = _fit_columns(rows, COLUMNS, console.width)
    table = Table(title=f"edgeopt: {metrics.get('model', '?')} on {metrics.get('data', '?')}",
                  title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "technique") else "right",
                         no_wrap=True)
    for stage, row in zip(stages, rows):
        style = "yellow" if stage["warnings"] or stage["missing"] else None
        table.add_row(*(f"[dim]{NA}[/]" if row[c] == NA else row[c] for c in columns),
                      style=style)
    console.print(table)
    if len(columns) < len(COLUMNS):
        hidden = ", ".join(c for c in COLUMNS if c not in columns)
        console.print(f"[dim]not shown at this width: {hidden} (see summary.md)[/]",
                      highlight=False)
    for warning in run.metrics["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    console.print(f"report: [bold]{out_dir / 'report.html'}[/]", highlight=False)


def _fit_columns(rows: list[dict[str, str]], columns: tuple[str, ...], width: int) -> list[str]:
    """The most important columns that fit in `width` characters, in table order."""
    need = {c: max([len(c)] + [len(r[c]) for r in rows]) + 3 for c in columns}
    chosen: set[str] = set()
    used = 1
    for column in _COLUMN_PRIORITY:
        if column in need and (used + need[column] <= width or not chosen):
            chosen.add(column)
            used += need[column]
    return [c for c in columns if c in chosen]


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_user_errors
def report(run_dir: Path) -> None:
    """Rebuild RUN_DIR/report.html (and figures.json) from the run folder RUN_DIR.

    Works on an interrupted run too: what finished is shown, what did not is marked.
    """
    from edgeopt.report import rebuild_report

    run = rebuild_report(run_dir)
    for problem in run.problems:
        click.echo(f"note: {problem}", err=True)
    click.echo(f"report: {(run.folder or run_dir) / 'report.html'}")


@main.command("list")
def list_builtins() -> None:
    """List the built-in zoo models, data sets, techniques and deployment targets."""
    from edgeopt import datasets, zoo
    from edgeopt.api import load_techniques
    from edgeopt.config import config_kinds
    from edgeopt.deploy import targets

    load_techniques()
    click.echo(f"models:     {', '.join(zoo.names())}")
    click.echo(f"data sets:  {', '.join(datasets.names())}")
    click.echo(f"techniques: {', '.join(config_kinds())}")
    click.echo(f"targets:    {', '.join(targets.names())}")


@main.command()
@click.argument("model")
@click.option("--data", "data_name", default="mnist5k", show_default=True)
@_user_errors
def profile(model: str, data_name: str) -> None:
    """Parameters, bytes and MACs per layer of a zoo MODEL on a data set's input shape."""
    import torch

    from edgeopt import datasets, zoo
    from edgeopt.profile import profile as profile_model
    from edgeopt.profile import render_markdown

    splits = datasets.load(data_name)
    net = zoo.create(model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    click.echo(render_markdown(profile_model(net, torch.zeros(1, *splits.input_shape))))


@main.command()
@click.argument("onnx_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data_name", default="mnist5k", show_default=True)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
@_user_errors
def measure(onnx_path: Path, data_name: str, threads: int) -> None:
    """Accuracy, size and latency of an ONNX file in ONNX Runtime on a data set's test split."""
    import json

    from edgeopt import datasets
    from edgeopt.runtime.measure import measure as run_measure

    splits = datasets.load(data_name)
    result = run_measure(onnx_path, splits.test, threads=threads, progress=True)
    click.echo(json.dumps(result.to_dict(), indent=2, default=str))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--stage", required=True, help="Stage of the run to deploy (an int8 stage for MCUs).")
@click.option("--target", required=True, help="cortex-m4, cortex-m7 or x86-ort.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for deploy.json (and the C sources and ELF image for MCU targets).")
@click.option("--inputs", "max_inputs", default=20, show_default=True,
              type=click.IntRange(min=1), help="How many of the run's test inputs to run.")
@_user_errors
def deploy(run_dir: Path, stage: str, target: str, out_dir: Path, max_inputs: int) -> None:
    """Build a stage of RUN_DIR for a target, run the run's test inputs on it (an emulated
    Cortex-M for MCU targets) and write DIR/deploy.json."""
    from edgeopt.deploy.stage import deploy_stage

    r = deploy_stage(run_dir, stage, target, out_dir, max_inputs=max_inputs)
    figures = [f"{key} {r[key]:,} B" for key in ("flash_bytes", "ram_bytes")
               if r.get(key) is not None]
    if r.get("instructions_per_inference") is not None:
        figures.append(f"{r['instructions_per_inference']:,} instructions/inference")
    figures.append(f"top-1 agreement with ONNX {r['top1_agreement_with_onnx']:.1%}")
    if r.get("bit_exact_with_reference") is not None:
        figures.append(f"bit-exact with reference: {r['bit_exact_with_reference']}")
    click.echo(f"{target}: " + ", ".join(figures))
    click.echo(f"deploy: {Path(out_dir) / 'deploy.json'}")



@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="cortex-m4, cortex-m7 or x86-ort.")
@click.option("--flash", default=None, help="Flash budget, e.g. 256KiB (default: the target's).")
@click.option("--ram", default=None, help="RAM budget, e.g. 64KiB (default: the target's).")
@click.option("--latency-ms", type=float, default=None,
              help="Latency budget in ms (MCU targets: predicted instructions at --clock-mhz).")
@click.option("--clock-mhz", type=float, default=None,
              help="MCU targets: core clock latency assumes (cortex-m4 168, cortex-m7 216).")
@click.option("--cpi", type=float, default=None,
              help="MCU targets: cycles per emulator-counted instruction (default 1.0).")
@click.option("--trials", type=int, required=True,
              help="Trials in the study (all workers together).")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after this many s.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for pareto.json, report.html and best/.")
@click.option("--storage", default=None,
              help="Optuna storage shared by workers: sqlite:///study.db or postgresql://...")
@click.option("--study", "study_name", default="edgeopt-search", show_default=True,
              help="Study name inside the storage.")
@click.option("--sampler", default="tpe", show_default=True, help="tpe or nsga2.")
@click.option("--finetune-samples", type=int, default=1024, show_default=True,
              help="Training samples each trial calibrates and recovers on.")
@click.option("--level", default="policy", show_default=True,
              help="policy (bits and channel widths of RECIPE's model), architecture (width, "
                   "depth, kernel, resolution of its zoo family, then int8) or both.")
@click.option("--arch-epochs", type=int, default=3, show_default=True,
              help="Architecture level: epochs training each candidate from scratch.")
@click.option("--space-samples", type=int, default=20, show_default=True,
              help="Architecture level: random architectures costed per candidate space.")
@click.option("--distill", is_flag=True,
              help="Architecture level: distill each candidate from the recipe's baseline.")
@click.option("--no-best", is_flag=True, help="Skip running the best policy into DIR/best.")
@click.option("--threads", type=int, default=None,
              help="Torch threads of this worker (default: all cores; 1 per worker when "
                   "several share a machine).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def search(recipe: Path | None, target: str, flash: str | None, ram: str | None,
           latency_ms: float | None, clock_mhz: float | None, cpi: float | None, trials: int,
           timeout: float | None, out_dir: Path,
           storage: str | None, study_name: str, sampler: str, finetune_samples: int,
           level: str, arch_epochs: int, space_samples: int, distill: bool,
           no_best: bool, threads: int | None, quiet: bool) -> None:
    """Search per-layer bit widths and channel widths of RECIPE's model (--level policy), or the
    width, depth, kernel and input resolution of its zoo family (--level architecture / both),
    under a target budget."""
    from edgeopt import interrupt
    from edgeopt.search import SearchSettings
    from edgeopt.search import search as run_search

    settings = SearchSettings(sampler=sampler, study_name=study_name,
                              finetune_samples=finetune_samples, level=level,
                              arch_epochs=arch_epochs, space_samples=space_samples,
                              distill=distill, run_best=not no_best, threads=threads)
    try:
        with interrupt.sigint_recorded():
            result = run_search(recipe, target=target, out_dir=out_dir, trials=trials,
                                flash=flash, ram=ram, latency_ms=latency_ms,
                                clock_mhz=clock_mhz, cpi=cpi, timeout=timeout, storage=storage,
                                settings=settings, progress=not quiet)
    except KeyboardInterrupt:
        kept = (f"finished trials are kept in {storage}; the same command resumes the search"
                if storage else "nothing is kept without --storage")
        click.echo(f"error: interrupted; {kept}.", err=True)
        sys.exit(130)
    best = result["best"]
    if best is None:
        click.echo("no trial fits the budget", err=True)
    else:
        test = best.get("test_accuracy")
        metric = "" if result.get("metric", "top1") == "top1" else f" {result['metric']}"
        click.echo(f"best: trial {best['number']}, validation{metric} "
                   f"{100 * best['accuracy']:.2f}%, "
                   + (f"test {100 * test:.2f}%, " if test is not None else "")
                   + f"flash {best['flash_bytes']} B, RAM {best['ram_bytes']} B")
    click.echo(f"pareto: {out_dir / 'pareto.json'}")


if __name__ == "__main__":
    main()
