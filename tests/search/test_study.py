"""Seeding a shared study: workers that start together enqueue the uniform policies once."""

import threading
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest

from edgeopt.search.space import Space
from edgeopt.search.study import SearchSettings, make_study, seed_uniform

SPACE = Space(layers=("a", "b"), groups=("a",), bit_choices=(4, 8))
OBJECTIVES = ("accuracy", "flash_bytes", "ram_bytes")

def _waiting(storage: str) -> list[dict]:
    study = optuna.load_study(study_name="edgeopt-search", storage=storage)
    return [t.system_attrs["fixed_params"] for t in study.trials]


def test_two_workers_seeding_together_enqueue_the_uniform_policies_once(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    # each worker its own study object and connection, as two processes would have
    studies = [make_study(SearchSettings(), OBJECTIVES, storage) for _ in range(2)]
    barrier = threading.Barrier(2)

    def worker(study):
        barrier.wait()  # both see an empty study at the same moment
        seed_uniform(study, SPACE, storage)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(worker, studies))
    params = _waiting(storage)
    assert len(params) == 6
    assert len({tuple(sorted(p.items())) for p in params}) == 6


def test_a_study_that_has_trials_is_not_seeded_again(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    study = make_study(SearchSettings(), OBJECTIVES, storage)
    seed_uniform(study, SPACE, storage)
    seed_uniform(study, SPACE, storage)
    params = _waiting(storage)
    assert len(params) == 6
    assert params[0] == {"bits:a": 8, "bits:b": 8, "keep:a": 1.0}


def test_sqlite_transactions_take_the_write_lock_when_they_begin(tmp_path):
    # Optuna claims a queued trial by reading WAITING then writing RUNNING: without the lock
    # from the start two workers could claim the same trial
    import sqlite3

    from edgeopt.search.study import _storage

    storage = _storage(f"sqlite:///{tmp_path}/s.db")
    with storage.engine.connect() as connection, connection.begin():
        connection.exec_driver_sql("SELECT 1")  # a read only
        other = sqlite3.connect(tmp_path / "s.db", timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()


def test_only_live_trials_begun_after_joining_count_as_running_elsewhere(tmp_path):
    import datetime
    import time

    from edgeopt.search.study import running_elsewhere

    storage = f"sqlite:///{tmp_path}/study.db"
    study = make_study(SearchSettings(), OBJECTIVES, storage)
    study.ask()  # a trial left RUNNING by a run that died before this worker joined
    time.sleep(0.05)
    joined = datetime.datetime.now()
    assert running_elsewhere(study, joined) == 0
    live = study.ask()  # another worker's trial, begun after this one joined
    study._storage.record_heartbeat(live._trial_id)
    assert running_elsewhere(study, joined) == 1
    study.tell(live, [0.5, 1.0, 1.0])
    assert running_elsewhere(study, joined) == 0


def _fake_context(evaluate):
    """A Context whose trials only suggest one parameter and report fixed costs."""
    from edgeopt.search.budget import make_budget
    from edgeopt.search.study import Context

    def record(ctx, trial):
        width = trial.suggest_categorical("width", [8, 16, 32, 64])
        evaluate(trial)
        return {"accuracy": width / 100, "flash_bytes": width, "ram_bytes": width,
                "latency_ms": None, "macs": width, "fits": True, "policy": None}

    return Context(base=None, splits=None, train=None, example=None, space=SPACE,
                   budget=make_budget("cortex-m4"), cost=None, settings=SearchSettings(),
                   objectives=OBJECTIVES, evaluate=record)


def test_a_trial_ctrl_c_stops_is_run_again_on_resume_and_not_counted(tmp_path):
    from edgeopt.search.output import trial_records
    from edgeopt.search.study import finished, run_trials

    storage = f"sqlite:///{tmp_path}/study.db"
    study = make_study(SearchSettings(), OBJECTIVES, storage)
    calls = []

    def ctrl_c_in_the_third(trial):
        calls.append(trial.params["width"])
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, _fake_context(ctrl_c_in_the_third), 5, None, progress=False)
    assert finished(study) == 2
    assert [r["number"] for r in trial_records(study)] == [0, 1]
    queued = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in queued] == [{"width": calls[2]}]
    resumed = make_study(SearchSettings(), OBJECTIVES, storage)
    rerun = []
    run_trials(resumed, _fake_context(lambda t: rerun.append(t.params["width"])), 5, None,
               progress=False)
    assert finished(resumed) == 5
    assert rerun[0] == calls[2]  # the interrupted policy first, from the queue
    assert len(trial_records(resumed)) == 5


def test_a_ctrl_c_swallowed_during_a_trial_stops_the_search_after_it(tmp_path, monkeypatch):
    # CPython drops a KeyboardInterrupt raised in a GC weakref callback: the recorded signal
    # must still stop the search, at the end of the trial it landed in
    from edgeopt import interrupt
    from edgeopt.search.study import finished, run_trials

    study = make_study(SearchSettings(), OBJECTIVES, None)

    def swallowed(trial):
        if trial.number == 1:
            monkeypatch.setattr(interrupt, "_pending", True)

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, _fake_context(swallowed), 5, None, progress=False)
    assert finished(study) == 2


def test_a_data_error_stops_the_search_with_that_error_and_the_trial_is_queued_again(tmp_path):
    from edgeopt.errors import DataError
    from edgeopt.search.study import finished, run_trials

    study = make_study(SearchSettings(), OBJECTIVES, f"sqlite:///{tmp_path}/study.db")

    def no_labels_in_the_second(trial):
        if trial.number == 1:
            raise DataError("training data has no targets")

    with pytest.raises(DataError, match="no targets"):
        run_trials(study, _fake_context(no_labels_in_the_second), 5, None, progress=False)
    assert finished(study) == 1
    assert [t.state.name for t in study.get_trials()][-1] == "WAITING"


def test_a_policys_own_failure_is_recorded_and_every_trial_failing_is_an_error():
    from edgeopt.errors import ModelError
    from edgeopt.search.output import trial_records
    from edgeopt.search.study import run_trials

    study = make_study(SearchSettings(), OBJECTIVES, None)

    def odd_ones_fail(trial):
        if trial.number % 2:
            raise RuntimeError("no longer runs after removing channels")

    run_trials(study, _fake_context(odd_ones_fail), 4, None, progress=False)
    records = trial_records(study)
    assert [r["state"] for r in records] == ["complete", "fail", "complete", "fail"]
    assert records[1]["error"] == "RuntimeError: no longer runs after removing channels"

    def every_one_fails(trial):
        raise RuntimeError("boom")

    with pytest.raises(ModelError, match=r"every trial of the search failed \(2\).*boom"):
        run_trials(make_study(SearchSettings(), OBJECTIVES, None),
                   _fake_context(every_one_fails), 2, None, progress=False)


def test_a_failed_policy_keeps_its_policy_and_all_4_bit_policies_are_not_clustered():
    from edgeopt.search.budget import make_budget
    from edgeopt.search.output import trial_records
    from edgeopt.search.study import Context, run_trials

    class Failing:
        def costs(self, model, policy):
            raise RuntimeError("no longer runs")

    space = Space(layers=("a", "b"), groups=(), bit_choices=(4,), cluster_choices=(0, 16))
    ctx = Context(base=None, splits=None, train=None, example=None, space=space,
                  budget=make_budget("cortex-m4"), cost=Failing(), settings=SearchSettings(),
                  objectives=OBJECTIVES)
    study = make_study(SearchSettings(), OBJECTIVES, None)
    study.enqueue_trial({"bits:a": 4, "bits:b": 4, "clusters": 16})
    with pytest.raises(Exception, match="every trial of the search failed"):
        run_trials(study, ctx, 1, None, progress=False)
    (record,) = trial_records(study)
    assert record["error"] == "RuntimeError: no longer runs"
    # clustering takes 8-bit layers only: with none, the policy is the unclustered one
    assert record["policy"] == {"bits": {"a": 4, "b": 4}, "keep": {}}
