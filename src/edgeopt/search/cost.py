"""Cost models: flash, RAM and latency of a policy applied to a model, predicted without a build.

A cost model is a small protocol; `FormulaCost` is exact bookkeeping of what the integer C
export stores (edgeopt.deploy.budget counts the same things):

    flash = sum over Conv / Linear layers of  weights * bits / 8  (4-bit packed two per byte,
            float layers 4 bytes a weight)  +  4 * out  (int32 bias, batch norm folded in)
            +  8 * out  (int32 multiplier and shift per output channel, integer layers)
            (a clustered policy: conv / fully connected weights as the C export stores them
            where that is smaller, b-bit indices into a codebook; clustered_gains)
    RAM   = the largest sum of activation bytes alive at one step of a topological schedule
            (inputs and outputs of the step both held), int8 tensors 1 byte an element, outputs
            of float layers 4; batch norm, activations and reshapes write in place.

Latency on the host comes from ONNX Runtime timings (edgeopt.search.latency); on an MCU target
from instructions predicted per layer (edgeopt.search.mcu) at the target's assumed clock.
Pruning and low-rank factorization run on a copy, through the trial's own pruner and
factorizer, so the shapes (widths, ranks) are the trial's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch
from torch import nn

from edgeopt.deploy.c.compress import CODE_BYTES, STRUCT_BYTES
from edgeopt.errors import ModelError
from edgeopt.search.space import (
    FLOAT,
    Policy,
    cluster_config,
    layer_bits,
    lowrank_config,
    quant_layers,
)


@dataclasses.dataclass(frozen=True)
class Costs:
    flash_bytes: int
    ram_bytes: int
    latency_ms: float | None
    macs: int


class CostModel(Protocol):
    def flash_bytes(self, model: nn.Module, policy: Policy) -> int: ...
    def ram_bytes(self, model: nn.Module, policy: Policy) -> int: ...
    def latency_ms(self, model: nn.Module, policy: Policy) -> float | None: ...


_IN_PLACE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity,
             nn.Flatten, nn.Hardtanh, nn.LeakyReLU)
_IN_PLACE_CALLS = {"relu", "relu6", "flatten", "view", "reshape", "squeeze", "unsqueeze",
                   "dropout", "contiguous", "size"}


def layer_bytes(weights: int, out: int, bits: int) -> int:
    """Flash of one Conv / Linear layer (see the module docstring)."""
    if bits == FLOAT:
        return 4 * weights + 4 * out
    return math.ceil(weights * bits / 8) + 4 * out + 8 * out


def clustered_gains(pruned: nn.Module, example: torch.Tensor, policy: Policy) -> list[int]:
    """Flash the C export saves on each conv / fully connected layer of `pruned` clustered into
    `policy.clusters` values per layer and quantized as the policy says: its encoder
    (edgeopt.deploy.c.compress) run on the very integer weights, against the dense bytes.
    Exact for the clustered weights before the trial's centroid fine-tuning (which moves the
    centroids, not the assignments)."""
    import edgeopt as eo
    from edgeopt.deploy.c.compress import encode
    from edgeopt.progress import quiet
    from edgeopt.quantization.modules import QuantizedWeightLayer

    quant = eo.QuantConfig.from_dict({**quant_layers(policy), "calibration_samples": 1})
    with quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clustered = eo.apply(pruned, eo.ClusterConfig.from_dict(cluster_config(policy)),
                             data=[(example, None)])
        quantized = eo.apply(clustered, quant, data=[(example[:1], None)])
    gains = []
    for module in quantized.modules():
        groups = getattr(module, "_hyperparameters", {}).get("groups", 1)
        if not isinstance(module, QuantizedWeightLayer) or groups != 1:
            continue  # depthwise weights stay dense in the C export
        w = module.weight_q.reshape(module.weight_q.shape[0], -1).numpy()
        dense = (w.size + 1) // 2 if module.spec.bits == 4 else w.size
        gains.append(dense - encode(w).nbytes - STRUCT_BYTES)
    return gains


@dataclasses.dataclass
class _Step:
    name: str
    inputs: list[str]
    output: str
    numel: int
    in_place: bool
    float_out: bool
    target: str = ""  # the module's name for call_module steps


def shaped_trace(model: nn.Module, example: torch.Tensor) -> Any:
    """`model`'s fx graph with each node's output shape at batch 1 (its "tensor_meta"). A model
    that torch.fx cannot trace symbolically (transformers' models slice by sizes computed from
    tensors) falls back to torch.export's graph: aten ops, their shapes recorded the same way,
    each op's layer named by its module stack."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = symbolic_trace(model)
        ShapeProp(traced).propagate(example[:1])
        return traced
    except Exception as fx_error:
        try:
            return torch.export.export(model, (example[:1],), strict=False).module()
        except Exception as exc:
            raise ModelError(
                f"the search's cost model cannot trace {type(model).__name__}: torch.fx "
                f"({type(fx_error).__name__}: {str(fx_error).splitlines()[0][:200]}) and "
                f"torch.export ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}) "
                "both failed; make its forward traceable.") from exc


def _layer_name(node: Any) -> str:
    """The layer a node belongs to: a call_module node's target, an aten op's innermost module
    (torch.export graphs), else the node's own name."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else node.name


def _call_name(node: Any) -> str:
    """relu, view, ... for torch functions, tensor methods and aten ops (aten.relu.default)."""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0] if isinstance(node.target, torch._ops.OpOverload) else name


def schedule(model: nn.Module, example: torch.Tensor, bits: dict[str, int],
             traced: Any = None) -> list[_Step]:
    """The model's fx graph in topological order with each tensor's element count (batch 1);
    `traced` (shaped_trace of the model) spares tracing it again."""
    traced = traced if traced is not None else shaped_trace(model, example)
    modules = dict(traced.named_modules())
    steps = []
    for node in traced.graph.nodes:
        if node.op in ("output", "get_attr"):  # weights and buffers are flash, not RAM
            continue
        meta = node.meta.get("tensor_meta")
        numel = math.prod(meta.shape) if meta is not None and hasattr(meta, "shape") else 0
        target = modules.get(node.target) if node.op == "call_module" else None
        name = _layer_name(node)
        in_place = isinstance(target, _IN_PLACE) or (
            node.op in ("call_function", "call_method") and _call_name(node) in _IN_PLACE_CALLS)
        inputs = [a.name for a in node.all_input_nodes]
        steps.append(_Step(node.name, inputs, node.name, numel, in_place and bool(inputs),
                           layer_bits(bits, name) == FLOAT, name))
    return steps


def peak_bytes(steps: list[_Step]) -> int:
    """Liveness over `steps`: in-place steps alias their first input's buffer."""
    root: dict[str, str] = {}
    size: dict[str, int] = {}
    for step in steps:
        if step.in_place:
            root[step.output] = root.get(step.inputs[0], step.inputs[0])
        else:
            root[step.output] = step.output
            size[step.output] = step.numel * (4 if step.float_out else 1)
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in [*step.inputs, step.output]:
            last[root.get(name, name)] = index
    if steps:
        last[root[steps[-1].output]] = len(steps)
    live: set[str] = set()
    peak = 0
    for index, step in enumerate(steps):
        live.add(root[step.output])
        peak = max(peak, sum(size.get(b, 0) for b in live))
        live = {b for b in live if last.get(b, index) > index}
    return peak


def pruned_copy(model: nn.Module, example: torch.Tensor, keep: dict[str, float]) -> nn.Module:
    """A copy with the channels `keep` asks for removed (magnitude order; shapes are what
    count), through the same pruner a trial uses."""
    sparsity = {k: round(1.0 - v, 4) for k, v in keep.items() if v < 1.0}
    if not sparsity:
        return model
    from edgeopt.pruning.apply import prune
    from edgeopt.pruning.config import PruneConfig

    config = PruneConfig(structure="channel", sparsity=0.0, layer_sparsity=sparsity)
    return prune(model, config, data=[(example, None)]).model


def shaped_copy(model: nn.Module, example: torch.Tensor, policy: Policy) -> nn.Module:
    """`model` in the shape `policy` gives it: pruned, then factorized at its low-rank energy
    by the trial's own factorizer (the ranks, read off the pruned weights, are the trial's)."""
    pruned = pruned_copy(model, example, policy.keep)
    if policy.energy >= 1.0:
        return pruned
    from edgeopt.lowrank.apply import factorize
    from edgeopt.lowrank.config import LowRankConfig

    config = LowRankConfig.from_dict(lowrank_config(policy))
    return factorize(pruned, config, data=[(example[:1], None)]).model


@dataclasses.dataclass
class _Shape:
    """One pruned (and factorized) shape of a model: what its costs share whatever the bit
    widths."""

    model: nn.Module  # held, so that its id, the cache key, cannot be reused
    pruned: nn.Module  # shaped_copy
    traced: Any  # shaped_trace(pruned)
    macs: int
    gains: dict[Any, list[int]] = dataclasses.field(default_factory=dict)  # clustered_gains


class FormulaCost:
    """The formulas above; latency from `latency` when given: a callable on (the pruned model,
    the policy, its shaped_trace), the trace spared to predictors that read shapes."""

    def __init__(self, example: torch.Tensor, latency: Any = None) -> None:
        self.example, self.latency = example, latency
        self._shapes: dict[tuple[Any, ...], _Shape] = {}  # (model id, keep, energy)

    def _shape(self, model: nn.Module, policy: Policy) -> _Shape:
        """shaped_copy, remembered with its trace: policies that differ only in bits (most
        of a search's seeds and cost estimates) share one."""
        key = (id(model), tuple(sorted(policy.keep.items())), policy.energy)
        if key not in self._shapes:
            if len(self._shapes) >= 16:
                self._shapes.pop(next(iter(self._shapes)))
            pruned = shaped_copy(model, self.example, policy)
            self._shapes[key] = _Shape(model, pruned, shaped_trace(pruned, self.example),
                                       _macs(pruned, self.example))
        return self._shapes[key]

    def costs(self, model: nn.Module, policy: Policy) -> Costs:
        shape = self._shape(model, policy)
        return Costs(flash_bytes=self._flash(shape, policy),
                     ram_bytes=self._ram(shape, policy),
                     latency_ms=self._latency(shape, policy),
                     macs=shape.macs)

    def flash_bytes(self, model: nn.Module, policy: Policy) -> int:
        return self._flash(self._shape(model, policy), policy)

    def ram_bytes(self, model: nn.Module, policy: Policy) -> int:
        return self._ram(self._shape(model, policy), policy)

    def latency_ms(self, model: nn.Module, policy: Policy) -> float | None:
        return self._latency(self._shape(model, policy), policy)

    def _latency(self, shape: _Shape, policy: Policy) -> float | None:
        return None if self.latency is None else self.latency(shape.pruned, policy, shape.traced)

    def _flash(self, shape: _Shape, policy: Policy) -> int:
        total = 0
        for name, module in shape.pruned.named_modules():
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
                out = module.weight.shape[0]
                total += layer_bytes(module.weight.numel(), out, layer_bits(policy.bits, name))
        if not policy.clusters:
            return total
        key = (policy.clusters, tuple(sorted(policy.bits.items())))
        if key not in shape.gains:
            shape.gains[key] = clustered_gains(shape.pruned, self.example, policy)
        # the C export stores no layer compressed unless the gains pay for the decoder's code
        saved = sum(g for g in shape.gains[key] if g > 0)
        return total - saved if saved > CODE_BYTES else total

    def _ram(self, shape: _Shape, policy: Policy) -> int:
        return peak_bytes(schedule(shape.pruned, self.example, policy.bits, shape.traced))


def latency_for(budget: Any, example: torch.Tensor) -> Any:
    """The latency predictor of `budget`'s target (None where there is none: an MCU target with
    no instruction table)."""
    if budget.kind == "host":
        from edgeopt.search.latency import latency_model

        return latency_model(example)
    from edgeopt.deploy.targets import get_target
    from edgeopt.search import mcu

    target = dataclasses.replace(get_target(budget.target), clock_hz=budget.clock_hz,
                                 cycles_per_instruction=budget.cycles_per_instruction)
    return mcu.latency_model(target, example)


def _macs(model: nn.Module, example: torch.Tensor) -> int:
    from edgeopt.profile import profile

    return int(profile(model, example[:1]).macs)
