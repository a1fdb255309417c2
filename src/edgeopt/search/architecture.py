"""The architecture level of the search (TinyNAS-style): width multiplier, depth, kernel size
and input resolution of a zoo family.

1. Space selection: each candidate space fixes a width multiplier and an input resolution
   (TinyNAS's (w, r) grid); `space_samples` random architectures of each (depth, kernel) are
   costed with the cost models, untrained. The space whose *fitting* samples have the highest
   mean MACs wins (more compute that still fits tends to mean more accuracy), and the table of
   every space is reported.
2. Inside the chosen space Optuna picks depth and kernel (and, at level "both", the policy of
   the built model). Each fitting candidate is trained from scratch for `arch_epochs` on the
   recipe's training split resized to the space's resolution, then quantized (int8 QAT, or the
   policy) as the policy level does, and scored on the resized validation split.

The best architecture is written as a normal recipe: DIR/architecture.yaml (model: this
module's `build` factory with its weights in DIR/architecture.safetensors, data: `resized_data`)
and run into DIR/best/.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from edgeopt.errors import invalid
from edgeopt.search.space import Policy, build_space

LEVELS = ("policy", "architecture", "both")
WIDTHS = (0.25, 0.5, 0.75, 1.0)  # width multipliers, relative to the zoo model
SCALES = (0.5, 0.75, 1.0)  # input resolutions, relative to the data set's


@dataclasses.dataclass(frozen=True)
class Family:
    """How a zoo family is built from an architecture, and what the search varies."""

    build: Callable[..., nn.Module]  # (input_shape, num_classes, width_mult, depth, kernel)
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    default_depth: int  # the zoo model's (with kernel 3): the first trial of a new study


def _channels(base: int, width_mult: float) -> int:
    return max(4, int(round(base * width_mult / 4)) * 4)  # multiples of 4 (SIMD-friendly)


def _dscnn(shape: tuple[int, ...], classes: int, width_mult: float, depth: int,
           kernel: int) -> nn.Module:
    from edgeopt.zoo.models import DSCNN

    return DSCNN(shape, classes, width=_channels(64, width_mult), blocks=depth, kernel=kernel)


def _resnet8(shape: tuple[int, ...], classes: int, width_mult: float, depth: int,
             kernel: int) -> nn.Module:
    from edgeopt.zoo.models import ResNet8

    return ResNet8(shape, classes, width=_channels(16, width_mult), stages=depth, kernel=kernel)


def _mobilenet(shape: tuple[int, ...], classes: int, width_mult: float, depth: int,
               kernel: int) -> nn.Module:
    from edgeopt.zoo.models import MobileNetV1

    return MobileNetV1(shape, classes, alpha=0.25 * width_mult, blocks=depth, kernel=kernel)


FAMILIES: dict[str, Family] = {
    "dscnn": Family(_dscnn, depths=(1, 2, 3, 4, 5, 6), kernels=(3, 5, 7), default_depth=4),
    "resnet8": Family(_resnet8, depths=(2, 3), kernels=(3, 5), default_depth=3),
    "mobilenetv1_vww": Family(_mobilenet, depths=(3, 5, 7, 9, 11, 13), kernels=(3, 5),
                              default_depth=13),
}


@dataclasses.dataclass(frozen=True)
class Arch:
    family: str
    width_mult: float
    resolution: int  # input height; the width scales with it
    depth: int
    kernel: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        return cls(**data)

    def label(self) -> str:
        return (f"{self.family} w{self.width_mult:g} r{self.resolution} d{self.depth} "
                f"k{self.kernel}")


def resized_shape(native: tuple[int, ...], resolution: int) -> tuple[int, ...]:
    """(C, H, W) resized to height `resolution`, the width in proportion."""
    channels, height, width = native
    return channels, resolution, max(1, round(width * resolution / height))


def build(family: str, width_mult: float, resolution: int, depth: int, kernel: int,
          input_shape: list[int], num_classes: int) -> nn.Module:
    """The model of one architecture (also the `model.factory` of DIR/architecture.yaml);
    `input_shape` is the data set's, before resizing."""
    shape = resized_shape(tuple(input_shape), resolution)
    return FAMILIES[family].build(shape, num_classes, width_mult, depth, kernel)


def resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs (N, C, H, W) resized to `shape` (antialiased bilinear, as image pipelines do)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    return torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear",
                                           antialias=True, align_corners=False)


def resize_splits(splits: Any, resolution: int) -> Any:
    """The splits with every input resized to height `resolution`."""
    from torch.utils.data import TensorDataset

    shape = resized_shape(splits.input_shape, resolution)
    parts = {name: TensorDataset(resize(getattr(splits, name).tensors[0], shape),
                                 *getattr(splits, name).tensors[1:])
             for name in ("train", "val", "test")}
    return dataclasses.replace(splits, **parts, input_shape=shape)


def resized_data(name: str, resolution: int, seed: int = 0) -> Any:
    """A built-in data set resized (the `data.factory` of DIR/architecture.yaml): its own
    train / val / test split, already normalized."""
    from edgeopt import datasets

    return _factory_splits(resize_splits(datasets.load(name, seed=seed), resolution))


def resized_user_data(data: dict[str, Any], root: str, resolution: int, seed: int = 0) -> Any:
    """The user's `data:` mapping (paths relative to `root`, the search recipe's folder) split
    and normalized as a run does, resized (the `data.factory` of DIR/architecture.yaml)."""
    from edgeopt.sources.data import load_data, parse_data_source

    splits = load_data(parse_data_source(data, Path(root)), None, seed)
    return _factory_splits(resize_splits(splits, resolution))


def _factory_splits(splits: Any) -> SimpleNamespace:
    """What a `data.factory` returns: an object with .train / .val / .test."""
    return SimpleNamespace(train=splits.train, val=splits.val, test=splits.test)


def check_level(parsed: Any, level: str) -> None:
    """Before any work: the level exists, and the architecture level has a family to vary
    (the data's shape and labels are checked once it is loaded: check_data)."""
    if level not in LEVELS:
        raise invalid("--level", "'policy', 'architecture' or 'both'", level)
    if level == "policy":
        return
    from edgeopt import datasets

    if not isinstance(parsed.model, str) or parsed.model not in FAMILIES:
        raise invalid("--level", f"'policy' for recipe.model {parsed.model_label!r} (the "
                      f"architecture level varies the zoo families {', '.join(FAMILIES)})", level)
    if isinstance(parsed.data, str) and len(datasets.spec(parsed.data)[0]) != 3:
        raise invalid("--level", f"'policy' for recipe.data {parsed.data_label!r} (the "
                      "architecture level resizes image data sets)", level)


def check_data(parsed: Any, splits: Any, metric: str, level: str) -> None:
    """The architecture level trains candidates from scratch on labeled images (C, H, W)."""
    if len(splits.input_shape) != 3 or metric != "top1":
        what = (f"recipe.data {parsed.data_label!r} has inputs of shape "
                f"{tuple(splits.input_shape)}" if len(splits.input_shape) != 3
                else f"recipe.metric is {metric}, not top1")
        raise invalid("--level", f"'policy' here: {what}, and the architecture level trains "
                      "candidates from scratch on class-labeled images (C, H, W)", level)


@dataclasses.dataclass(frozen=True)
class ArchSpace:
    """One candidate space: width and resolution fixed, depth and kernel free."""

    family: str
    width_mult: float
    resolution: int

    def sample(self, rng: random.Random) -> Arch:
        family = FAMILIES[self.family]
        return Arch(self.family, self.width_mult, self.resolution, rng.choice(family.depths),
                    rng.choice(family.kernels))

    def suggest(self, trial: Any) -> Arch:
        family = FAMILIES[self.family]
        return Arch(self.family, self.width_mult, self.resolution,
                    trial.suggest_categorical("arch:depth", family.depths),
                    trial.suggest_categorical("arch:kernel", family.kernels))


def candidate_spaces(family: str, native: tuple[int, ...], widths: tuple[float, ...] = WIDTHS,
                     scales: tuple[float, ...] = SCALES) -> list[ArchSpace]:
    resolutions = sorted({max(4, round(native[1] * s)) for s in scales})
    return [ArchSpace(family, w, r) for w in widths for r in resolutions]


def uniform_policy(model: nn.Module, bits: int) -> Policy:
    """Every Conv / Linear layer at `bits`, no pruning."""
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    return Policy(bits=dict.fromkeys(layers, bits), keep={})


def arch_costs(arch: Arch, native: tuple[int, ...], classes: int, bits: int,
               latency: Any = None) -> Any:
    """Predicted costs of `arch` under uniform `bits` (untrained: shapes are what count)."""
    from edgeopt.search.cost import FormulaCost

    shape = resized_shape(native, arch.resolution)
    model = build(**arch.to_dict(), input_shape=list(native), num_classes=classes).eval()
    return FormulaCost(torch.zeros(1, *shape), latency).costs(model, uniform_policy(model, bits))


def select_space(spaces: list[ArchSpace], budget: Any, native: tuple[int, ...], classes: int,
                 *, samples: int, bits: int, seed: int,
                 latency: Callable[[torch.Tensor], Any] | None = None
                 ) -> tuple[ArchSpace, list[dict[str, Any]]]:
    """TinyNAS's choice: the space whose fitting samples have the highest mean MACs (when none
    fits anywhere: the space with the smallest samples, so the search still reports them).
    latency: example input -> latency predictor, when the latency budget counts here too."""
    def one(arch: Arch) -> Any:
        example = torch.zeros(1, *resized_shape(native, arch.resolution))
        return arch_costs(arch, native, classes, bits, latency and latency(example))

    cost = functools.lru_cache(maxsize=None)(one)
    rows = []
    for index, space in enumerate(spaces):
        rng = random.Random(seed * 1000 + index)
        archs = [space.sample(rng) for _ in range(samples)]
        costs = [cost(arch) for arch in archs]
        fitting = [(c, a) for c, a in zip(costs, archs)
                   if budget.fits(c.flash_bytes, c.ram_bytes, c.latency_ms)]
        largest = max(fitting, key=lambda f: f[0].macs, default=(None, None))[1]
        rows.append({"width_mult": space.width_mult, "resolution": space.resolution,
                     "samples": samples, "fitting": len(fitting),
                     "mean_macs_fitting": (sum(c.macs for c, _ in fitting) / len(fitting)
                                           if fitting else None),
                     "mean_flash_bytes": sum(c.flash_bytes for c in costs) / samples,
                     "largest_fitting": largest and {"depth": largest.depth,
                                                     "kernel": largest.kernel},
                     "chosen": False})
    scored = [i for i, r in enumerate(rows) if r["fitting"]]
    if scored:
        chosen = max(scored, key=lambda i: rows[i]["mean_macs_fitting"])
    else:
        chosen = min(range(len(rows)), key=lambda i: rows[i]["mean_flash_bytes"])
    rows[chosen]["chosen"] = True
    return spaces[chosen], rows


def distill_loss(teacher: nn.Module, native: tuple[int, ...]) -> Callable[..., torch.Tensor]:
    """Hinton distillation from `teacher` (the recipe's baseline, which sees each batch resized
    back to the data set's resolution), DistillConfig's default temperature and weight."""
    from edgeopt.distillation.losses import distillation_loss

    teacher = teacher.eval()

    def loss(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = teacher(resize(inputs, native))
        return distillation_loss(logits, soft, targets, temperature=4.0, alpha=0.7)[0]

    return loss


def train_candidate(arch: Arch, splits: Any, native: tuple[int, ...], settings: Any,
                    teacher: nn.Module | None = None) -> nn.Module:
    """`arch` trained from scratch on the resized splits, distilled from `teacher` when
    settings.distill (seeded: the best run gets the same weights as its trial)."""
    from edgeopt.training import fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build(**arch.to_dict(), input_shape=list(native), num_classes=splits.num_classes)
    loss = distill_loss(teacher, native) if settings.distill and teacher is not None else None
    fit(model, splits.train, splits.val, epochs=settings.arch_epochs, lr=2e-3,
        schedule="cosine", seed=settings.seed, loss_fn=loss, progress=False)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class ArchLevel:
    """What an architecture trial needs beyond the policy level's Context."""

    space: ArchSpace
    level: str  # "architecture" (uniform int8) or "both" (the policy of the built model too)
    native: tuple[int, ...]  # the data set's input shape
    latency: bool  # predict latency (the policy level does)

    def evaluate(self, ctx: Any, trial: Any) -> dict[str, Any]:
        """A trial: suggest an architecture (and policy), cost it, train it if it fits, then
        quantize and score it as the policy level does."""
        import time

        from edgeopt.search.cost import FormulaCost, latency_for
        from edgeopt.search.study import evaluate_policy

        start = time.perf_counter()
        arch = self.space.suggest(trial)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.settings.seed)
            model = build(**arch.to_dict(), input_shape=list(self.native),
                          num_classes=ctx.splits.num_classes).eval()
        if self.level == "both":
            policy = build_space(model, ctx.example, ctx.budget.kind).suggest(trial)
        else:
            policy = uniform_policy(model, 8)
        again = repeated(trial)
        if again is not None:
            return {**again, "seconds": time.perf_counter() - start}
        cost = FormulaCost(ctx.example, latency_for(ctx.budget, ctx.example) if self.latency
                           else None)
        costs = cost.costs(model, policy)
        if ctx.budget.fits(costs.flash_bytes, costs.ram_bytes, costs.latency_ms):
            model = train_candidate(arch, ctx.splits, self.native, ctx.settings, ctx.base)
        record = evaluate_policy(dataclasses.replace(ctx, base=model, cost=cost), policy)
        return {**record, "architecture": arch.to_dict(),
                "seconds": time.perf_counter() - start}


def repeated(trial: Any) -> dict[str, Any] | None:
    """The record of a finished trial with the same parameters: TPE repeats points of a small
    space, and retraining one from scratch would only give the same result again."""
    from optuna.trial import TrialState

    for done in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.params == trial.params and "architecture" in done.user_attrs:
            return {k: v for k, v in done.user_attrs.items() if k != "worker"}
    return None


def architecture_context(parsed: Any, ctx: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Choose the space (see the module docstring) and return the Context its trials run in
    (splits resized to its resolution) with the space table."""
    from torch.utils.data import Subset

    settings = ctx.settings
    check_data(parsed, ctx.splits, ctx.metric, settings.level)
    native = tuple(ctx.splits.input_shape)
    bits = 8 if settings.level == "architecture" else 4  # the cheapest unpruned policy
    latency = None
    if ctx.budget.kind == "mcu" and ctx.budget.latency_ms is not None:  # cheap to predict there
        from edgeopt.search.cost import latency_for

        bits = 8  # on an MCU 8-bit layers are the fastest
        latency = functools.partial(latency_for, ctx.budget)
    space, rows = select_space(candidate_spaces(parsed.model, native), ctx.budget, native,
                               ctx.splits.num_classes, samples=settings.space_samples,
                               bits=bits, seed=settings.seed, latency=latency)
    splits = resize_splits(ctx.splits, space.resolution)
    level = ArchLevel(space=space, level=settings.level, native=native,
                      latency=ctx.cost.latency is not None)
    example = splits.test[0][0].unsqueeze(0)
    arch_ctx = dataclasses.replace(ctx, splits=splits, example=example,
                                   train=(Subset(splits.train, ctx.train.indices)
                                          if isinstance(ctx.train, Subset) else splits.train),
                                   evaluate=level.evaluate)
    return arch_ctx, rows


def _resized_data_source(parsed: Any, resolution: int) -> dict[str, Any]:
    """DIR/architecture.yaml's `data:`: the recipe's data resized to `resolution`."""
    if isinstance(parsed.data, str):
        return {"factory": "edgeopt.search.architecture:resized_data",
                "kwargs": {"name": parsed.data, "resolution": resolution, "seed": parsed.seed}}
    root = str(parsed.root or Path.cwd())  # the user's relative paths stay the recipe's
    return {"factory": "edgeopt.search.architecture:resized_user_data",
            "kwargs": {"data": parsed.source["data"], "root": root, "resolution": resolution,
                       "seed": parsed.seed}}


def seed_architecture(study: Any, family: str, spaces: list[dict[str, Any]]) -> None:
    """A new study starts from the chosen space's fitting sample with the most MACs (TinyNAS's
    heuristic once more), else from the zoo model's depth and kernel."""
    if study.trials:
        return
    chosen = next(row for row in spaces if row["chosen"])
    start = chosen["largest_fitting"] or {"depth": FAMILIES[family].default_depth, "kernel": 3}
    study.enqueue_trial({"arch:depth": start["depth"], "arch:kernel": start["kernel"]},
                        skip_if_exists=True)  # workers starting together enqueue it once


def run_best(parsed: Any, best: dict[str, Any], budget: Any, settings: Any, folder: Path,
             progress: bool) -> dict[str, Any]:
    """The best architecture retrained, saved as DIR/architecture.safetensors beside a recipe
    DIR/architecture.yaml that starts from it, and that recipe run into DIR/best (test split)."""
    import yaml
    from safetensors.torch import save_file

    from edgeopt.recipes.baseline import load_baseline, load_splits
    from edgeopt.recipes.run import run_recipe
    from edgeopt.search.space import policy_stages

    arch, policy = Arch.from_dict(best["architecture"]), Policy.from_dict(best["policy"])
    splits = load_splits(parsed)
    native = tuple(splits.input_shape)
    teacher = load_baseline(parsed, splits, progress) if settings.distill else None
    model = train_candidate(arch, resize_splits(splits, arch.resolution), native, settings,
                            teacher)
    save_file(model.state_dict(), str(folder / "architecture.safetensors"))
    recipe = {key: parsed.source[key] for key in ("metric", "measure", "export")
              if key in parsed.source}
    recipe.update({
        "model": {"factory": "edgeopt.search.architecture:build",
                  "kwargs": {**arch.to_dict(), "input_shape": list(native),
                             "num_classes": splits.num_classes},
                  "weights": "architecture.safetensors",
                  "input_shape": list(resized_shape(native, arch.resolution))},
        "data": _resized_data_source(parsed, arch.resolution),
        "seed": parsed.seed, "target": budget.target,
        "stages": policy_stages(policy, settings.epochs)})
    (folder / "architecture.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run_recipe(folder / "architecture.yaml", folder / "best", progress=progress)
    stage = result.stages[-1]
    return {"run": "best", "recipe": "architecture.yaml", "test_accuracy": stage.accuracy,
            "onnx_size_bytes": stage.size_bytes, "onnx_latency_ms": stage.latency_ms}
