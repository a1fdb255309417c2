"""Resume: an interrupted run continues from its last finished stage or epoch and ends with the
metrics of an uninterrupted run; DIR is never half-written (API.md, "Resuming")."""

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import edgeopt.api
import edgeopt.checkpoint
from edgeopt.checkpoint import CheckpointError
from edgeopt.cli import main
from edgeopt.errors import ConfigError, DataError
from edgeopt.recipes import run_recipe

# lenet300 on digits (1.8k 8x8 images): a cached baseline, two training stages and int8
CHAIN = {
    "model": "lenet300", "data": "digits", "epochs": 2, "metric": "top1",
    "stages": [
        {"name": "pruned", "technique": "prune",
         "config": {"sparsity": 0.5, "structure": "unstructured", "finetune_epochs": 2}},
        {"name": "int8", "technique": "quantize", "speed_guard": False,
         "config": {"calibration_samples": 64}},
        {"name": "student", "technique": "distill", "from": "pruned", "config": {"epochs": 2}},
    ],
    "measure": {"runs": 3, "warmup": 1, "accuracy_budget": 100.0},
}
SAME = ("accuracy", "score", "size_bytes", "stored_bytes", "params", "macs", "onnx")


def _key(metrics):
    return [{k: s[k] for k in ("name", *SAME)} for s in metrics["stages"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The metrics of the uninterrupted run (also warms the baseline cache)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test (conftest) and the killed processes: same floats
    try:
        with pytest.MonkeyPatch.context() as patch:  # the session's cache (conftest)
            patch.setenv("EDGEOPT_CACHE_DIR",
                         str(tmp_path_factory.getbasetemp() / "edgeopt-cache"))
            run_recipe(CHAIN, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def _fail_on(monkeypatch, kind):
    real = edgeopt.api.apply_with_stats

    def apply(model, config, **kwargs):
        if config.kind == kind:
            raise DataError("injected failure")
        return real(model, config, **kwargs)

    monkeypatch.setattr(edgeopt.api, "apply_with_stats", apply)


def test_resume_after_a_failed_stage_matches_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                  reference):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_on(patch, "quantize")
        with pytest.raises(DataError):
            run_recipe(CHAIN, out, progress=False)
    assert not out.exists()
    scratch = tmp_path / ".run.edgeopt.partial"
    finished = sorted(p.stem for p in (scratch / ".resume" / "stages").glob("*.json"))
    assert finished == ["baseline", "pruned"]
    # `edgeopt report DIR` on the failed run shows the stages that finished
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "did not finish" in result.output and "int8" in result.output
    html = (scratch / "report.html").read_text()
    assert "pruned" in html and not out.exists()

    _refuses_another_recipe(tmp_path, out)
    _refuses_a_tampered_checkpoint(tmp_path)

    calls = []
    real = edgeopt.api.apply_with_stats
    monkeypatch.setattr(edgeopt.api, "apply_with_stats",
                        lambda m, c, **k: calls.append(c.kind) or real(m, c, **k))
    run_recipe(CHAIN, out, progress=False, resume=True)
    # pruned is rebuilt from its checkpoints (the student starts from it); nothing retrains
    assert calls == ["prune", "quantize", "distill"]
    assert _key(json.loads((out / "metrics.json").read_text())) == _key(reference)
    assert not scratch.exists()


def test_resume_mid_training_continues_from_the_last_epoch(tmp_path, monkeypatch, reference):
    out = tmp_path / "run"
    saves = []
    real_save = edgeopt.checkpoint.Loop.save

    def save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves.append(self.path)
        if "student" in str(self.path):  # the distillation's first epoch is on disk: stop
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(edgeopt.checkpoint.Loop, "save", save)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(CHAIN, out, progress=False)
    assert not out.exists()
    epochs = []
    real_restore = edgeopt.checkpoint.Loop.restore

    def restore(self, *args, **kwargs):
        saved = real_restore(self, *args, **kwargs)
        epochs.append((self.path.parent.name, saved and saved["epoch"]))
        return saved

    monkeypatch.setattr(edgeopt.checkpoint.Loop, "restore", restore)
    run_recipe(CHAIN, out, progress=False, resume=True)
    assert ("student", 1) in epochs  # picked up after its first epoch
    assert _key(json.loads((out / "metrics.json").read_text())) == _key(reference)


def _refuses_another_recipe(tmp_path, out):
    changed = dict(CHAIN, seed=1)
    with pytest.raises(ConfigError, match="different recipe"):
        run_recipe(changed, out, progress=False, resume=True)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(changed))
    result = CliRunner().invoke(main, ["optimize", str(path), "--out", str(out), "--resume",
                                       "--quiet"])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "--resume" in result.output
    assert (tmp_path / ".run.edgeopt.partial" / ".resume" / "stages" / "pruned.json").is_file()


def _refuses_a_tampered_checkpoint(tmp_path):
    """Resume reads checkpoints with weights_only: a pickle that would run code is refused."""
    import pickle

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / ".run.edgeopt.partial", copy / ".run.edgeopt.partial")
    ckpts = sorted((copy / ".run.edgeopt.partial" / ".resume" / "checkpoints" / "pruned")
                   .glob("*.pt"))  # read when the pruned stage is rebuilt
    assert ckpts
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpts[0].write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        run_recipe(CHAIN, copy / "run", progress=False, resume=True)
    assert not marker.exists()


# --- fault injection: a real `edgeopt optimize` process, killed at random points -------------

def _start(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from edgeopt.cli import main; main()"
    log = (out.parent / "stderr.log").open("w")  # a file: a full pipe would stall the run
    # Ctrl-C's default action in the child even when this runner ignores it (a background job)
    default_sigint = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, "-c", code, "optimize", str(recipe), "--out",
                             str(out), "--quiet", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=log, text=True, preexec_fn=default_sigint)


def _whole_or_absent(out: Path) -> None:
    """DIR is either not there or a complete run folder."""
    if not out.exists():
        return
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in metrics["stages"]:
        assert (out / stage["onnx"]).stat().st_size == stage["size_bytes"]
    assert (out / "report.html").is_file() and (out / "summary.md").is_file()


# Moments to kill at: a stage's row or a training epoch's checkpoint has just been written
MOMENTS = ["stages/baseline.json", "checkpoints/pruned/001-fit.pt", "stages/pruned.json",
           "stages/int8.json", "checkpoints/student/001-distill.pt", "stages/student.json"]


def _kill_when(proc: subprocess.Popen, path: Path, sig: int, delay: float) -> bool:
    """Send `sig` `delay` seconds after `path` appears; False if the run ended first."""
    deadline = time.monotonic() + 300
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return True


def test_killed_process_resumes_to_the_same_metrics(tmp_path, reference):
    """SIGKILL and SIGINT, in random order at two random moments of one run: the run is resumed
    after each (so a resumed run is itself killed and resumed) and ends with the metrics of an
    uninterrupted run. One run for both signals: each process costs its start-up and the work it
    redoes, so this is about half the time of one killed run per signal."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(CHAIN))
    out = tmp_path / "run"
    scratch = tmp_path / ".run.edgeopt.partial" / ".resume"
    rng = random.Random()
    moments = sorted(rng.sample(range(len(MOMENTS)), 2))
    signals = rng.sample([signal.SIGKILL, signal.SIGINT], 2)
    proc = _start(recipe, out)
    for index, sig in zip(moments, signals):
        delay = rng.uniform(0.0, 0.3)
        killed = _kill_when(proc, scratch / MOMENTS[index], sig, delay)
        print(f"killed with {sig!r} {delay:.2f} s after {MOMENTS[index]}: {killed}")
        _whole_or_absent(out)
        if not killed:  # the run ended first
            break
        if sig == signal.SIGINT:  # "error: interrupted", or Python's own exit mid-import
            assert proc.returncode in (130, -signal.SIGINT), (tmp_path / "stderr.log").read_text()
        proc = _start(recipe, out, "--resume")
    proc.wait(timeout=300)
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    _whole_or_absent(out)
    assert _key(json.loads((out / "metrics.json").read_text())) == _key(reference)
    assert not (tmp_path / ".run.edgeopt.partial").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import edgeopt.recipes

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeopt.recipes, "run_recipe", interrupted)
    result = CliRunner().invoke(main, ["optimize", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert result.output.count("error:") == 1 and "--resume" in result.output


# --- resume under torchrun ----------------------------------------------------------------------

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _torchrun(*args: object) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    worker = Path(__file__).with_name("resume_worker.py")
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(worker),
                           *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# one distillation stage: stopped after its first epoch, on both ranks
DISTILL = {"model": "lenet300", "data": "digits", "epochs": 2, "metric": "top1",
           "stages": [{"name": "student", "technique": "distill", "config": {"epochs": 2}}],
           "measure": {"runs": 3, "warmup": 1, "accuracy_budget": 100.0}}


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this Python")
def test_resume_under_torchrun_follows_rank_0(tmp_path):
    """Two processes stopped in the distillation's second epoch resume together: rank 1, whose
    last epoch checkpoint never reached its disk, continues from rank 0's, as rank 0 does."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(DISTILL))
    out = tmp_path / "run"
    _torchrun(recipe, out, "stop", tmp_path / "stop")
    assert not out.exists()
    assert (tmp_path / ".run.edgeopt.partial/.resume/checkpoints/student/001-distill.pt").is_file()
    shutil.rmtree(tmp_path / "..run.rank1.edgeopt.partial/.resume/checkpoints/student")

    _torchrun(recipe, out, "resume", tmp_path / "resume")
    for rank in (0, 1):
        log = json.loads((tmp_path / f"resume.rank{rank}.json").read_text())
        assert log["calls"] == ["distill"], rank
        assert ["student", 1] in log["restored"], rank
        assert all(epoch for _, epoch in log["restored"]), rank  # no loop trained afresh
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["baseline", "student"]
    _whole_or_absent(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # rank folders
