"""Budget-aware search: cost predictors against measurements, search against uniform policies,
two workers against one.

    .venv/bin/python bench/bench_search.py costs                 # predictors vs export_c / ORT
    .venv/bin/python bench/bench_search.py target --trials 24    # resnet8 under a flash budget
    .venv/bin/python bench/bench_search.py workers --trials 8    # 1 vs 2 workers, one SQLite study
        [--same-policies]   # both runs train one queued list of policies
    .venv/bin/python bench/bench_search.py arch --trials 10 --flash 16KiB --epochs 12 [--distill]
    .venv/bin/python bench/bench_search.py mcu --per-model 4 [--target cortex-m4] [--fit]

costs: random policies (bits 4/8 per layer, keep ratios, low-rank energy) on zoo architectures
the predictors were not tuned on; predicted flash / RAM against what edgeopt.deploy's C export
stores and plans, predicted x86-ort latency against ONNX Runtime timing the whole exported model.
target: `edgeopt search` under a flash budget below the int8 model's size; the best fitting
uniform policy (uniform 4-bit, uniform channel keep + int8 or 4-bit, all trained the same way:
the search's seeded trials) is run as a recipe too, both measured on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgeopt as eo
from edgeopt.search.cost import FormulaCost, shaped_copy
from edgeopt.search.latency import latency_model
from edgeopt.search.space import Policy, build_space, policy_stages, quant_layers


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _mape(pred: list[float], real: list[float]) -> float:
    return 100.0 * statistics.mean(abs(p - r) / r for p, r in zip(pred, real))


def _random_policy(space, rng: random.Random) -> Policy:
    return Policy(bits={n: rng.choice((4, 8)) for n in space.layers},
                  keep={g: rng.choice(space.keep_choices) for g in space.groups},
                  energy=rng.choice(space.energy_choices))


def costs(per_model: int) -> None:
    from edgeopt.deploy import export_c
    from edgeopt.export.onnx import export_onnx
    from edgeopt.runtime.measure import measure

    rng = random.Random(0)
    rows = []
    torch.manual_seed(0)
    for name in ("lenet5", "dscnn", "resnet8"):
        model = eo.zoo.create(name, (1, 28, 28), 10).eval()
        example = torch.randn(1, 1, 28, 28)
        calib = [(torch.randn(8, 1, 28, 28), None) for _ in range(4)]
        space = build_space(model, example, "mcu")
        cost = FormulaCost(example, latency_model(example))
        for _ in range(per_model):
            policy = _random_policy(space, rng)
            pred = cost.costs(model, policy)
            pruned = shaped_copy(model, example, policy)
            config = eo.QuantConfig.from_dict({**quant_layers(policy), "calibration_samples": 32})
            quantized = eo.apply(pruned, config, data=calib)
            with tempfile.TemporaryDirectory() as tmp:
                info = export_c(quantized, tmp, example)
                path = export_onnx(quantized, Path(tmp) / "m.onnx", example)
                ms = measure(path, [(example, torch.tensor([0]))], threads=1, warmup=20,
                             runs=100).latency_ms
            rows.append({"model": name, "policy": policy.label(), "flash_pred": pred.flash_bytes,
                         "flash_c": info.flash_bytes, "weights_c": info.weight_bytes,
                         "ram_pred": pred.ram_bytes, "ram_c": info.ram_bytes + info.io_bytes,
                         "peak_c": info.peak_live_bytes, "lat_pred": pred.latency_ms,
                         "lat_ort": ms})
            print(json.dumps(rows[-1]), flush=True)
    for what, pred, real in (("flash vs C constants", "flash_pred", "flash_c"),
                             ("flash vs C weights+bias+requant", "flash_pred", "weights_c"),
                             ("RAM vs C arena + I/O", "ram_pred", "ram_c"),
                             ("RAM vs C peak live", "ram_pred", "peak_c"),
                             ("latency vs ORT model", "lat_pred", "lat_ort")):
        p, r = [x[pred] for x in rows], [x[real] for x in rows]
        print(f"| {what} | {len(rows)} | {_spearman(p, r):.3f} | {_mape(p, r):.1f} % |")


def mcu(target: str, per_family: int, refit: bool) -> None:
    """The MCU instruction predictor (fitted on synthetic networks; --fit measures them again)
    against qemu counts of held-out zoo architectures and policies, predicted from shapes as a
    search does."""
    from edgeopt.search import mcu as predictor
    from edgeopt.search import mcufit

    table = predictor.load_table(target)
    if refit or table is None:
        table = mcufit.fit_target(target)
    print(f"table: sources {table['sources']} (now {predictor.sources_hash()}), "
          f"{table['nets']} training nets, in-sample median layer error "
          f"{table['layer_error_pct']} %", flush=True)
    rows = mcufit.validate(target, table, per_family)
    families = ("dscnn", "resnet8", "mobilenetv1_vww")
    print("| predictor vs measured | models | Spearman ρ | mean abs. error |")
    for label, keep in (("held-out architectures", lambda r: r["model"].split()[0] in families),
                        ("held-out policies", lambda r: r["model"].split()[0] not in families),
                        ("all", lambda r: True)):
        chosen = [r for r in rows if keep(r)]
        pred, real = [r["predicted"] for r in chosen], [r["measured"] for r in chosen]
        if len(chosen) > 2:
            print(f"| {target} instructions, {label} | {len(chosen)} | "
                  f"{_spearman(pred, real):.3f} | {_mape(pred, real):.1f} % |")


# (zoo family, native input shape): the held-out validation set is drawn from the architecture
# level's own space (edgeopt.search.architecture); nothing in the predictor is fitted to it
LATENCY_FAMILIES = (("dscnn", (1, 28, 28)), ("resnet8", (3, 32, 32)),
                    ("mobilenetv1_vww", (3, 64, 64)))


def _latency_candidate(family: str, native: tuple[int, ...], rng: random.Random):
    """A random architecture of `family` (width, resolution, depth, kernel) and a random policy
    of it (bits 4 / 8 / float per layer, float in about a third, channel keep ratios)."""
    from edgeopt.search import architecture as A
    from edgeopt.search.space import FLOAT

    fam = A.FAMILIES[family]
    arch = A.Arch(family, rng.choice(A.WIDTHS), round(native[1] * rng.choice(A.SCALES)),
                  rng.choice(fam.depths), rng.choice(fam.kernels))
    shape = A.resized_shape(native, arch.resolution)
    model = A.build(**arch.to_dict(), input_shape=list(native), num_classes=10).eval()
    example = torch.randn(1, *shape)
    space = build_space(model, example, "host")
    bits = (4, 8, FLOAT) if rng.random() < 0.35 else (4, 8)
    policy = Policy(bits={n: rng.choice(bits) for n in space.layers},
                    keep={g: rng.choice(space.keep_choices) for g in space.groups},
                    energy=rng.choice(space.energy_choices))
    return arch, policy, shaped_copy(model, example, policy), example


def _time_interleaved(models: list, rounds: int, runs: int) -> list[float]:
    """Median ms of each whole model in ORT (ORT_ENABLE_ALL, 1 thread, thread CPU time): each
    round times every model once, so drift on a shared machine hits all of them alike."""
    from edgeopt.search.latency import _session, time_session

    sessions = [(_session(m, "all"), feed) for m, feed in models]
    medians = [[] for _ in sessions]
    for _ in range(rounds):
        for index, (session, feed) in enumerate(sessions):
            medians[index].append(time_session(session, feed, runs=runs, warmup=5))
    return [statistics.median(m) for m in medians]


def latency(per_model: int, seed: int = 13, rounds: int = 7) -> None:
    """The kernel-level x86-ort predictor against ORT timing each whole model, on random
    architecture-level candidates of the zoo families with random policies."""
    from edgeopt.profile import profile
    from edgeopt.search.latency import KernelTable, exported, predict_onnx

    table = KernelTable()
    rng = random.Random(seed)
    rows, models = [], []
    for family, native in LATENCY_FAMILIES:
        for _ in range(per_model):
            torch.manual_seed(len(rows))
            try:
                arch, policy, pruned, example = _latency_candidate(family, native, rng)
            except ValueError as exc:  # the pruner's batch-norm pass on a 1x1 map (README)
                print(f"skipped a {family} candidate: {exc}", flush=True)
                continue
            start = time.perf_counter()
            onnx_model = exported(pruned, policy, example)
            export_s = time.perf_counter() - start
            feed = {onnx_model.graph.input[0].name: example.numpy()}
            fresh = len(table.table)
            pred = predict_onnx(onnx_model, feed, table)
            rows.append({"family": family, "arch": arch.label(), "policy": policy.label(),
                         "pred_ms": pred, "macs": int(profile(pruned, example).macs),
                         "export_s": export_s, "predict_s": time.perf_counter() - start - export_s,
                         "new_kernels": len(table.table) - fresh})
            models.append((onnx_model, feed))
            print(json.dumps(rows[-1]), flush=True)
    for row, ms in zip(rows, _time_interleaved(models, rounds, runs=30)):
        row["ort_ms"] = ms
    print(json.dumps([[r["pred_ms"], r["ort_ms"], r["macs"]] for r in rows]))
    print(f"load average {os.getloadavg()}; kernel table {table.path} ({len(table.table)} keys)")
    print("| held-out candidates | n | Spearman ρ (predictor) | mean abs. error | ρ of MACs |")
    for label, subset in [*((f, [r for r in rows if r["family"] == f])
                            for f, _ in LATENCY_FAMILIES), ("all", rows)]:
        pred, real = [r["pred_ms"] for r in subset], [r["ort_ms"] for r in subset]
        print(f"| {label} | {len(subset)} | {_spearman(pred, real):.3f} | "
              f"{_mape(pred, real):.1f} % | {_spearman([r['macs'] for r in subset], real):.3f} |")
    print(f"per candidate: export {statistics.median(r['export_s'] for r in rows):.2f} s, "
          f"predict {statistics.median(r['predict_s'] for r in rows):.3f} s (medians)")


def target(trials: int, flash: str, samples: int) -> None:
    from edgeopt.recipes.run import run_recipe
    from edgeopt.search import SearchSettings, search

    recipe = {"model": "resnet8", "data": "mnist5k", "measure": {"runs": 50, "warmup": 5}}
    out = Path(tempfile.mkdtemp(prefix="bench-search-"))
    start = time.perf_counter()
    result = search(recipe, target="cortex-m4", flash=flash, trials=trials, out_dir=out / "s",
                    settings=SearchSettings(finetune_samples=samples), progress=True)
    wall = time.perf_counter() - start
    uniform = [t for t in result["trials"][:6] if t["fits"] and t["accuracy"] is not None]
    best_uniform = max(uniform, key=lambda t: t["accuracy"]) if uniform else None
    rows = [("search best", result["best"])]
    if best_uniform is not None:
        run = run_recipe({**recipe, "target": "cortex-m4",
                          "stages": policy_stages(Policy.from_dict(best_uniform["policy"]))},
                         out / "uniform", progress=False)
        rows.append((f"best uniform ({Policy.from_dict(best_uniform['policy']).label()})",
                     {**best_uniform, "test_accuracy": run.stages[-1].accuracy}))
    print(f"budget {flash}, {trials} trials, {wall:.0f} s wall, folder {out}")
    _print_domination(result["trials"][:6], result["trials"][6:], tuple(result["objectives"]))
    for label, r in rows:
        if r is None:
            print(f"| {label} | nothing fits |")
            continue
        print(f"| {label} | {r['flash_bytes'] / 1024:.1f} KiB | {r['ram_bytes'] / 1024:.1f} KiB | "
              f"{100 * r['accuracy']:.2f} % | {100 * r['test_accuracy']:.2f} % |")


def _print_domination(uniform: list[dict], searched: list[dict],
                      objectives: tuple[str, ...]) -> None:
    """Whether each measured uniform point is dominated (in the study's objectives: validation
    accuracy up, costs down) by a policy the search found, not by another uniform seed."""
    from edgeopt.search.output import dominates

    searched = [t for t in searched if t["accuracy"] is not None]
    for point in uniform:
        label = Policy.from_dict(point["policy"]).label()
        if point["accuracy"] is None:
            print(f"uniform {label}: over budget, not measured")
            continue
        by = [t["number"] for t in searched if dominates(t, point, objectives)]
        print(f"uniform {label}: {100 * point['accuracy']:.2f} % at "
              f"{point['flash_bytes'] / 1024:.1f} KiB, dominated by searched trials {by or 'none'}")


def arch(trials: int, flash: str, samples: int, epochs: int, distill: bool) -> None:
    """The architecture level (DS-CNN family on mnist5k) against the zoo DS-CNN's uniform
    policies (the policy level's six seeded trials), both under `flash`; each best is run as a
    recipe and measured on the test split."""
    from edgeopt.search import SearchSettings, search

    recipe = {"model": "dscnn", "data": "mnist5k", "measure": {"runs": 50, "warmup": 5}}
    out = Path(tempfile.mkdtemp(prefix="bench-arch-"))
    results, walls = {}, {}
    for level, count in (("policy", 6), ("architecture", trials)):
        start = time.perf_counter()
        settings = SearchSettings(level=level, finetune_samples=samples, arch_epochs=epochs,
                                  distill=distill)
        results[level] = search(recipe, target="cortex-m4", flash=flash, trials=count,
                                out_dir=out / level, settings=settings, progress=True)
        walls[level] = time.perf_counter() - start
    print(f"budget {flash}, folder {out}")
    for row in results["architecture"]["architecture"]["spaces"]:
        print(json.dumps(row))
    for t in results["architecture"]["trials"]:
        acc = "-" if t["accuracy"] is None else f"{100 * t['accuracy']:.2f} %"
        print(f"trial {t['number']}: {t['architecture']} {t['flash_bytes'] / 1024:.1f} KiB "
              f"{t['macs'] / 1e6:.2f} MMAC {acc}")
    for level, label in (("architecture", "architecture search best"),
                         ("policy", "zoo dscnn, best uniform policy that fits")):
        best = results[level]["best"]
        if best is None:
            print(f"| {label} | nothing fits | {walls[level]:.0f} s |")
            continue
        what = (best["architecture"] if level == "architecture"
                else Policy.from_dict(best["policy"]).label())
        print(f"| {label} ({what}) | {best['flash_bytes'] / 1024:.1f} KiB | "
              f"{best['ram_bytes'] / 1024:.1f} KiB | {best['macs'] / 1e6:.2f} M | "
              f"{100 * best['accuracy']:.2f} % | {100 * best['test_accuracy']:.2f} % | "
              f"{walls[level]:.0f} s |")


def _queue_same_policies(recipe: Path, storages: list[str], trials: int) -> None:
    """Queue one list of policies (the six uniform ones, then random ones) in every study, so
    that one worker and two train the same policies and only the scaling differs (the workers'
    samplers, seeded by process, would otherwise pick policies of other training times)."""
    from edgeopt.recipes.schema import load_recipe
    from edgeopt.search import SearchSettings, _context, make_budget
    from edgeopt.search.study import make_study

    settings = SearchSettings()
    ctx = _context(load_recipe(recipe), make_budget("cortex-m4"), settings, False)
    rng = random.Random(0)
    policies = [ctx.space.uniform(bits, keep) for keep in (1.0, 0.75, 0.5) for bits in (8, 4)]
    policies += [_random_policy(ctx.space, rng) for _ in range(trials - len(policies))]
    for storage in storages:
        study = make_study(settings, ctx.objectives, storage)
        for policy in policies[:trials]:
            study.enqueue_trial(ctx.space.params(policy))


def workers(trials: int, threads_each: int | None = None, samples: int = 512,
            model: str = "lenet5", data: str = "digits", same: bool = False) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    recipe = folder / "recipe.yaml"
    epochs = {"epochs": 2} if model == "lenet5" else {}  # other zoo models: cached weights
    recipe.write_text(json.dumps({"model": model, "data": data, **epochs}))
    if same:
        _queue_same_policies(recipe, [f"sqlite:///{folder}/study{n}.db" for n in (1, 2)], trials)
    times = {}
    for count in (1, 2):
        storage = f"sqlite:///{folder}/study{count}.db"
        # the machine's cores shared out: one worker uses all, two use half each
        threads = threads_each or max(1, (os.cpu_count() or 1) // count)
        command = [sys.executable, "-m", "edgeopt.cli", "search", str(recipe), "--target",
                   "cortex-m4", "--trials", str(trials), "--storage", storage, "--quiet",
                   "--no-best", "--finetune-samples", str(samples), "--threads", str(threads)]
        start = time.perf_counter()
        procs = [subprocess.Popen([*command, "--out", str(folder / f"out{count}-{i}")])
                 for i in range(count)]
        assert all(p.wait() == 0 for p in procs)
        times[count] = time.perf_counter() - start
        load = os.getloadavg()[0]
        print(f"{count} worker(s), {threads} thread(s) each: {trials} trials in "
              f"{times[count]:.1f} s (load average {load:.1f} at the end)", flush=True)
    print(f"two workers / one: {times[2] / times[1]:.2f}x the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("arch", "costs", "latency", "mcu", "target", "workers"))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--flash", default="48KiB")
    parser.add_argument("--samples", type=int, default=None,
                        help="recovery samples a trial (default: 1024; workers: 512)")
    parser.add_argument("--per-model", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="workers: torch threads of every worker (default: cores / workers)")
    parser.add_argument("--epochs", type=int, default=3, help="arch: epochs per candidate")
    parser.add_argument("--seed", type=int, default=13, help="latency: the candidates' seed")
    parser.add_argument("--distill", action="store_true", help="arch: distill candidates")
    parser.add_argument("--model", default="lenet5", help="workers: zoo model")
    parser.add_argument("--data", default="digits", help="workers: data set")
    parser.add_argument("--same-policies", action="store_true",
                        help="workers: queue one list of policies in both studies")
    parser.add_argument("--target", default="cortex-m4", help="mcu: the MCU target")
    parser.add_argument("--fit", action="store_true", help="mcu: measure and fit the table again")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "arch":
        arch(args.trials, args.flash, args.samples or 1024, args.epochs, args.distill)
    elif args.what == "costs":
        costs(args.per_model)
    elif args.what == "mcu":
        mcu(args.target, args.per_model, args.fit)
    elif args.what == "latency":
        latency(args.per_model, args.seed)
    elif args.what == "target":
        target(args.trials, args.flash, args.samples or 1024)
    else:
        workers(args.trials, args.threads, args.samples or 512, args.model, args.data,
                args.same_policies)


if __name__ == "__main__":
    main()
