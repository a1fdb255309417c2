"""Zoo models trained once on a built-in data set, then cached as safetensors (never pickle).

Cache location, first match wins: the `cache_dir` argument (files go straight into it), the
EDGEOPT_CACHE_DIR environment variable (files go into its `zoo/` folder), or
platformdirs.user_cache_dir("edgeopt")/zoo. Each entry is `<model>_<dataset>_seed<S>_ep<E>`:
a .safetensors state dict plus a .json sidecar with accuracies, epochs and edgeopt version.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgeopt import datasets
from edgeopt.errors import ConfigTypeError, ModelError, OutputError, invalid
from edgeopt.zoo.catalog import RECONSTRUCTION_MODELS, check_input_shape, create


@dataclass(frozen=True)
class PretrainedInfo:
    """What training recorded for one cached zoo model."""

    model: str
    dataset: str
    seed: int
    epochs: int
    input_shape: tuple[int, ...]
    num_classes: int
    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    version: str  # edgeopt version that trained it
    weights: str  # path of the .safetensors file


@dataclass(frozen=True)
class _Plan:
    epochs: int
    lr: float = 2e-3
    batch_size: int = 64
    schedule: str = "cosine"  # annealing to zero: steadier last epochs than a constant lr


# Chosen so each model trains in under a minute on a 2-core CPU and lands at about 96-98 % test
# accuracy on mnist5k (lenet300, an MLP, about 93-95 %) and >= 95 % on basic-motions.
_PLANS: dict[tuple[str, str], _Plan] = {
    ("lenet300", "mnist5k"): _Plan(20),
    ("lenet5", "mnist5k"): _Plan(20),
    ("dscnn", "mnist5k"): _Plan(15),
    ("resnet8", "mnist5k"): _Plan(15),
}
_DEFAULT_PLANS: dict[str, _Plan] = {
    "mnist5k": _Plan(15),
    "digits": _Plan(30),
    # 32 training series: small batches give enough optimizer steps per epoch.
    "basic-motions": _Plan(60, lr=3e-3, batch_size=8),
}


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds cached zoo weights (not created here)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("EDGEOPT_CACHE_DIR")
    if env:
        return Path(env) / "zoo"
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeopt")) / "zoo"


def pretrained(
    name: str,
    dataset: str,
    seed: int = 0,
    *,
    epochs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Zoo model `name` trained on `dataset`'s train split, in eval() mode.

    Trains on first use (best validation epoch kept, with a progress bar) and caches the
    weights; later calls load them in well under a second. `epochs=None` uses a per-model
    default chosen for accuracy within about a minute of CPU time.
    """
    info = _resolve(name, dataset, seed, epochs, cache_dir)
    model = _load_cached(info)
    if model is None:
        model, info = _train_and_cache(info, progress)
    return model.eval()


def pretrained_info(
    name: str,
    dataset: str,
    seed: int = 0,
    *,
    epochs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PretrainedInfo:
    """Accuracies and provenance of `pretrained(...)` with the same arguments (trains if needed)."""
    info = _resolve(name, dataset, seed, epochs, cache_dir)
    cached = _read_sidecar(info)
    if cached is not None and Path(cached.weights).exists():
        return cached
    return _train_and_cache(info, progress)[1]


def _resolve(
    name: str, dataset: str, seed: int, epochs: int | None, cache_dir: str | os.PathLike[str] | None
) -> PretrainedInfo:
    """Validate everything before any training; an info template with the cache path."""
    input_shape, num_classes = datasets.spec(dataset)
    check_input_shape(name, input_shape)
    if name in RECONSTRUCTION_MODELS:
        raise ModelError(f"zoo model {name!r} outputs a reconstruction, and the zoo trains "
                         "classifiers only: use it untrained (zoo.create) or train it yourself.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigTypeError(f"seed must be an int; got {type(seed).__name__}.")
    if epochs is None:
        epochs = _plan(name, dataset).epochs
    elif isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise invalid("pretrained.epochs", "an int >= 1 or None", epochs)
    stem = f"{name}_{dataset}_seed{seed}_ep{epochs}"
    weights = cache_root(cache_dir) / f"{stem}.safetensors"
    return PretrainedInfo(
        model=name,
        dataset=dataset,
        seed=seed,
        epochs=epochs,
        input_shape=input_shape,
        num_classes=num_classes,
        val_accuracy=float("nan"),
        test_accuracy=float("nan"),
        train_seconds=float("nan"),
        version="",
        weights=str(weights),
    )


def _plan(name: str, dataset: str) -> _Plan:
    return _PLANS.get((name, dataset), _DEFAULT_PLANS[dataset])


def _sidecar(info: PretrainedInfo) -> Path:
    return Path(info.weights).with_suffix(".json")


def _read_sidecar(info: PretrainedInfo) -> PretrainedInfo | None:
    try:
        record = json.loads(_sidecar(info).read_text())
        record["input_shape"] = tuple(record["input_shape"])
        record["weights"] = info.weights  # the cache folder may have moved
        return PretrainedInfo(**record)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing or unreadable: retrain


def _load_cached(info: PretrainedInfo) -> nn.Module | None:
    """The cached model, or None when the cache entry is missing or damaged."""
    if _read_sidecar(info) is None or not Path(info.weights).exists():
        return None
    from safetensors.torch import load_file

    model = create(info.model, info.input_shape, info.num_classes)
    try:
        model.load_state_dict(load_file(info.weights))
    except Exception as exc:  # damaged or stale file: say so, then retrain over it
        warnings.warn(f"ignoring unreadable cached weights {info.weights}: {exc}", stacklevel=3)
        return None
    return model


def _train_and_cache(info: PretrainedInfo, progress: bool) -> tuple[nn.Module, PretrainedInfo]:
    from edgeopt import __version__
    from edgeopt.training import evaluate, fit

    folder = Path(info.weights).parent
    _guard_write(folder, lambda: folder.mkdir(parents=True, exist_ok=True))  # before training
    splits = datasets.load(info.dataset, seed=info.seed)
    plan = _plan(info.model, info.dataset)
    with torch.random.fork_rng(devices=[]):  # deterministic init without touching global RNG
        torch.manual_seed(info.seed)
        model = create(info.model, info.input_shape, info.num_classes)
    start = time.perf_counter()
    history = fit(
        model,
        splits.train,
        splits.val,
        epochs=info.epochs,
        lr=plan.lr,
        schedule=plan.schedule,
        batch_size=plan.batch_size,
        seed=info.seed,
        progress=progress,
        desc=f"{info.model} on {info.dataset}",
    )
    seconds = time.perf_counter() - start
    info = PretrainedInfo(
        **{
            **asdict(info),
            "val_accuracy": history.best_val_accuracy or 0.0,
            "test_accuracy": evaluate(model, splits.test),
            "train_seconds": round(seconds, 2),
            "version": __version__,
        }
    )
    _save(model, info)
    return model.eval(), info


def _save(model: nn.Module, info: PretrainedInfo) -> None:
    from safetensors.torch import save_file

    folder = Path(info.weights).parent
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # The weights path is stored relative to the sidecar so the cache folder can move.
    record = {**asdict(info), "input_shape": list(info.input_shape)}
    record["weights"] = Path(info.weights).name
    # Weights first, sidecar last: an entry counts as cached only once both exist.
    text = json.dumps(record, indent=2)
    _guard_write(folder, lambda: _atomic_write(Path(info.weights), lambda t: save_file(state, t)))
    _guard_write(folder, lambda: _atomic_write(_sidecar(info), lambda t: Path(t).write_text(text)))


def _guard_write(folder: Path, action: Callable[[], object]) -> None:
    try:
        action()
    except OSError as exc:
        raise OutputError(
            f"cannot write the zoo cache in {folder}: {exc}; set EDGEOPT_CACHE_DIR or pass "
            "cache_dir= to a writable folder."
        ) from exc


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write via a temp file in the same folder, then os.replace: readers never see half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a cache is not secret
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
