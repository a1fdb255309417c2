"""One Optuna study: each trial picks a policy, predicts its costs, and (if it fits) applies it
with short recovery training and scores it on the validation split. Workers share the study
through an RDB storage; an interrupted search resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeopt import interrupt
from edgeopt.errors import ConfigError, ConfigTypeError, DataError, ModelError, OutputError
from edgeopt.search.budget import Budget
from edgeopt.search.cost import FormulaCost
from edgeopt.search.space import Policy, Space, policy_stages

OBJECTIVES = ("accuracy", "flash_bytes", "ram_bytes", "latency_ms")
INTERRUPTED = "interrupted"  # user attribute of a trial Ctrl-C stopped (queued again)


class _StopSearch(Exception):
    """Carries an error that ends the search out of Optuna, which catches ValueErrors."""


def _fails_every_trial(ctx: Context, exc: Exception) -> bool:
    """An error about the data (or, at the policy level, the configuration): every policy
    would fail the same way. An architecture candidate's ConfigError is its own."""
    if isinstance(exc, DataError | OutputError):
        return True
    return ctx.evaluate is None and isinstance(exc, ConfigError | ConfigTypeError)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How each trial trains and scores (small on purpose: many trials on 2 cores)."""

    finetune_samples: int = 1024  # training samples for calibration and recovery (QAT)
    epochs: int = 1  # recovery epochs of quantization-aware training
    sampler: str = "tpe"  # "tpe" (multi-objective TPE with constraints) or "nsga2"
    seed: int = 0
    study_name: str = "edgeopt-search"
    run_best: bool = True  # run the best policy as a recipe into DIR/best (one worker is enough)
    level: str = "policy"  # "policy", "architecture" or "both" (edgeopt.search.architecture)
    arch_epochs: int = 3  # architecture level: epochs training each candidate from scratch
    space_samples: int = 20  # architecture level: random architectures costed per space
    distill: bool = False  # architecture level: candidates learn from the baseline's logits too
    threads: int | None = None  # torch threads of this worker (None: torch's default, all cores)


@dataclasses.dataclass
class Context:
    """What every trial of one worker shares."""

    base: nn.Module
    splits: Any
    train: Any  # the training subset trials calibrate and fine-tune on
    example: torch.Tensor
    space: Space
    budget: Budget
    cost: FormulaCost
    settings: SearchSettings
    objectives: tuple[str, ...]
    evaluate: Any = None  # (ctx, trial) -> record of the architecture level; None: policy level
    metric: str = "top1"  # the recipe's metric, scored on the validation split ("accuracy")
    recipe_seed: int = 0  # stages are seeded as the recipe runner seeds them (best/ = its trial)
    reference: Any = None  # the baseline's validation outputs (metrics that compare with them)


def apply_policy(ctx: Context, policy: Policy) -> nn.Module:
    """The recipe stages of `policy`, applied as a run would (same configs, same order)."""
    from edgeopt.api import apply
    from edgeopt.config import config_type
    from edgeopt.progress import quiet
    from edgeopt.recipes.run import stage_seeded

    model = ctx.base
    stages = policy_stages(policy, ctx.settings.epochs, ctx.metric)
    with quiet():  # the techniques' own bars would bury the search's
        for index, stage in enumerate(stages):
            config = config_type(stage["technique"]).from_dict(stage["config"])
            teacher = {"teacher": ctx.base} if getattr(config, "needs_teacher", False) else {}
            # seeded as the recipe runner seeds the stage: best/, the same stages run as a
            # recipe on the same training data, gets this very model
            with stage_seeded(ctx.recipe_seed, index):
                model = apply(model, config, data=ctx.train, **teacher)
    return model


def validation_score(ctx: Context, model: nn.Module) -> float:
    """The recipe's metric on the validation split: top-1 against labels, or agreement /
    cosine against the baseline's outputs."""
    from edgeopt.runtime.scores import score
    from edgeopt.training import evaluate, predict_logits

    if ctx.metric == "top1":
        return float(evaluate(model, ctx.splits.val))
    return score(ctx.metric, predict_logits(model, ctx.splits.val).numpy(), ctx.reference, None)


def evaluate_policy(ctx: Context, policy: Policy) -> dict[str, Any]:
    """Costs always; accuracy (the recipe's metric) on the validation split only for policies
    that fit."""
    start = time.perf_counter()
    costs = ctx.cost.costs(ctx.base, policy)
    fits = ctx.budget.fits(costs.flash_bytes, costs.ram_bytes, costs.latency_ms)
    accuracy = None
    if fits:
        accuracy = validation_score(ctx, apply_policy(ctx, policy).eval())
    return {"accuracy": accuracy, "flash_bytes": costs.flash_bytes, "ram_bytes": costs.ram_bytes,
            "latency_ms": costs.latency_ms, "macs": costs.macs, "fits": fits,
            "policy": policy.to_dict(), "seconds": time.perf_counter() - start}


def _requeue(trial: Any) -> None:
    """Optuna records a stopped trial as failed; it is not one: marked, it does not count
    towards --trials, and its parameters are queued so that a resumed search runs it again."""
    trial.set_user_attr(INTERRUPTED, True)
    trial.study.enqueue_trial(trial.params)


def objective(ctx: Context, trial: Any) -> tuple[float, ...]:
    try:
        if ctx.evaluate is not None:
            record = ctx.evaluate(ctx, trial)
        else:
            policy = ctx.space.suggest(trial)
            trial.set_user_attr("policy", policy.to_dict())  # kept if the trial fails
            record = evaluate_policy(ctx, policy)
    except KeyboardInterrupt:
        _requeue(trial)
        raise
    except Exception as exc:
        if _fails_every_trial(ctx, exc):  # stopped, as by Ctrl-C
            _requeue(trial)
            raise _StopSearch(exc) from exc  # not in Optuna's `catch`: it ends the search
        trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        raise  # this policy's own failure: recorded, the search goes on
    for key, value in record.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    violations = ctx.budget.violations(record["flash_bytes"], record["ram_bytes"],
                                       record["latency_ms"])
    for name, value in zip(("flash", "ram", "latency"), violations):
        trial.set_constraint(name, value)  # feasible where <= 0; samplers read them
    # over-budget policies are not trained: the sampler sees accuracy 0 (and the violation)
    values = {**record, "accuracy": record["accuracy"] or 0.0}
    return tuple(float(values[k]) for k in ctx.objectives)


def make_study(settings: SearchSettings, objectives: tuple[str, ...], storage: str | None) -> Any:
    """A new study, or the one in `storage` under the same name (resume / another worker)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = settings.seed if storage is None else _worker_seed(settings.seed)
    if settings.sampler == "nsga2":
        sampler: Any = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True)
    rdb = _storage(storage) if storage is not None else None
    directions = ["maximize" if k == "accuracy" else "minimize" for k in objectives]
    return optuna.create_study(storage=rdb, sampler=sampler, study_name=settings.study_name,
                               directions=directions, load_if_exists=True)


def _worker_seed(seed: int) -> int:
    """Workers of one shared study seeded alike would propose the same policies (measured: two
    workers trained one sampled policy twice in 12 trials); each worker draws its own."""
    import zlib

    return zlib.crc32(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode())


def _storage(url: str) -> Any:
    """The RDB storage; workers that start together on a new file may race to create its
    tables ("table ... already exists", a duplicate alembic version): the loser tries again."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            # a worker that dies leaves its trial RUNNING: heartbeats let others fail and retry it
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4-5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    url, heartbeat_interval=10, grace_period=30, engine_kwargs=kwargs,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
            return _immediate_transactions(storage) if url.startswith("sqlite") else storage
        except (OperationalError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)
    return None


def _immediate_transactions(storage: Any) -> Any:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna claims a queued trial by reading that it is WAITING and then marking it RUNNING; its
    row lock (SELECT ... FOR UPDATE) does not exist in SQLite, and pysqlite starts transactions
    only at the first write, so two workers could both claim one trial and the slower one fail
    ("Cannot tell a COMPLETE trial"; measured with two workers starting together)."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, says BEGIN

    @event.listens_for(storage.engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # connections opened before the listeners are not reused
    return storage


def seed_uniform(study: Any, space: Space, storage: str | None = None,
                 more: Callable[[], list[Policy]] | None = None) -> None:
    """A new study starts from the uniform policies (the baselines any search must beat), then
    the policies `more` returns (edgeopt.search.seeds). Workers starting together would each
    see an empty study and enqueue the seeds twice: the check and the enqueue hold a lock (a
    file beside a SQLite study; on other databases `skip_if_exists` narrows the race to the
    moment both enqueue). `more` runs before the lock, so a second worker does not wait for it."""
    extra = more() if more is not None and not study.trials else []
    with _seed_lock(storage):
        if study.trials:
            return
        policies = [space.uniform(bits, keep) for keep in (1.0, 0.75, 0.5) for bits in (8, 4)]
        for policy in policies + extra:
            study.enqueue_trial(space.params(policy), skip_if_exists=True)


def _seed_lock(storage: str | None) -> Any:
    if storage is None or not storage.startswith("sqlite"):
        return contextlib.nullcontext()
    from filelock import FileLock
    from sqlalchemy.engine import make_url

    return FileLock(f"{make_url(storage).database}.seed.lock", timeout=120)


def finished_trials(study: Any) -> list[Any]:
    """Trials that count towards --trials: complete, pruned or failed, not interrupted."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if not t.user_attrs.get(INTERRUPTED)]


def finished(study: Any) -> int:
    return len(finished_trials(study))


def running_elsewhere(study: Any, since: datetime.datetime) -> int:
    """Trials other workers are running now that will finish: those begun after this worker
    joined (an earlier one may be a dead run's leftover) whose heartbeat is not stale. Counting
    them keeps two workers from both starting a last trial beyond `--trials`."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale: set[int] = set()
    storage = study._storage
    if running and hasattr(storage, "_get_stale_trial_ids"):  # RDB storage with heartbeats
        with contextlib.suppress(Exception):  # a private API: without it, count them all
            stale = set(storage._get_stale_trial_ids(study._study_id))
    return sum(1 for t in running if t.datetime_start and t.datetime_start >= since
               and t._trial_id not in stale)


def run_trials(study: Any, ctx: Context, trials: int, timeout: float | None,
               progress: bool) -> None:
    """Trials until the study holds `trials` finished ones (all workers together) or `timeout`."""
    from edgeopt.progress import bar as progress_bar

    done = finished(study)
    if done >= trials:
        return
    bar = progress_bar(total=trials, initial=done, desc="search", unit="trial",
                       disable=not progress)
    joined = datetime.datetime.now()

    def after(study: Any, trial: Any) -> None:
        interrupt.check()  # a Ctrl-C swallowed during the trial stops the search here
        bar.n = done_now = finished(study)
        best = best_fitting([t.user_attrs for t in study.get_trials(deepcopy=False)])
        if best is not None:
            bar.set_postfix_str(f"best {100 * best['accuracy']:.2f}% at "
                                f"{best['flash_bytes'] / 1024:.1f} KiB")
        bar.refresh()
        if done_now + running_elsewhere(study, joined) >= trials:
            study.stop()

    try:
        study.optimize(lambda t: objective(ctx, t), timeout=timeout, callbacks=[after],
                       catch=(ValueError, RuntimeError))
    except _StopSearch as stop:
        raise stop.__cause__ from None
    finally:
        bar.close()
    _check_some_trial_ran(study)


def _check_some_trial_ran(study: Any) -> None:
    """A study whose every trial failed is an error, not "no trial fits the budget"."""
    trials = finished_trials(study)
    errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
    if trials and len(errors) == len(trials):
        raise ModelError(f"every trial of the search failed ({len(errors)}); the first: "
                         f"{errors[0]}")


def best_fitting(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate measured policy within budget (less flash breaks ties)."""
    fitting = [r for r in records if r.get("fits") and r.get("accuracy") is not None]
    if not fitting:
        return None
    return max(fitting, key=lambda r: (r["accuracy"], -r["flash_bytes"]))
