"""Weight-only quantization of a transformers decoder bigger than memory, one block at a time.

    result = eo.quantize_checkpoint("llama-folder", "out", eo.QuantConfig(
        method="weight_only", activations=None,
        weights=eo.QuantSpec(bits=4, granularity="per_group", group_size=128)),
        calibration=token_ids)                          # [samples, tokens]; GPTQ / AWQ need it

The model skeleton is built on the `meta` device (no memory); tensors are read lazily from the
safetensors shards, one decoder block at a time: materialize, quantize (the same layer modules,
GPTQ and AWQ math as `eo.apply`), export that block to ONNX, append its weights to the external
data file, free it. GPTQ and AWQ see each block's real inputs: the calibration hidden states are
propagated through the already quantized blocks. Peak memory is about one block in float plus
the embedding table, whatever the model's depth.

`quantize_decoder` runs the same per-block steps on a model already in memory (the reference the
streamed result is tested against).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError, DataError, ModelError, invalid
from edgeopt.quantization import graph as qgraph
from edgeopt.quantization import stream_onnx
from edgeopt.quantization.awq import search_scale
from edgeopt.quantization.config import Granularity, Method, QuantConfig, QuantSpec, Rounding
from edgeopt.quantization.reconstruct import _gptq_layer
from edgeopt.quantization.weights import LayerBuilder, spec_for

__all__ = ["StreamResult", "quantize_checkpoint", "quantize_decoder"]

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
CHUNK_VALUES = 1 << 21  # weights quantized at a time in grouped layers (8 MB of float)

# AWQ groups of a Llama-style block: the producer whose output channels absorb 1/s, and the
# Linears reading that output (their input columns take s).
AWQ_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
              ("mlp.up_proj", ("mlp.down_proj",)))


@dataclasses.dataclass
class StreamResult:
    """What quantize_checkpoint wrote: the ONNX graph, its external data and, on request, the
    quantized tensors of every block (safetensors, one file per block)."""

    onnx: Path | None  # None without `export`
    external_data: Path | None
    tensors: list[Path]
    blocks: int
    layers: dict[str, dict[str, Any]]  # per quantized Linear: bits, group size, AWQ alpha


def check_streamable(config: QuantConfig) -> None:
    """Refuse, before reading any weight, what the streaming path does not do."""
    if config.method is not Method.WEIGHT_ONLY:
        raise invalid("QuantConfig.method", "'weight_only' for quantize_checkpoint",
                      config.method.value)
    if config.rounding not in (Rounding.NEAREST, Rounding.GPTQ):
        raise invalid("QuantConfig.rounding", "'nearest' or 'gptq' for quantize_checkpoint",
                      config.rounding.value)
    for spec in (config.weights, *config.weight_overrides.values()):
        if spec.dtype.is_float or spec.levels.value != "uniform":
            raise ConfigError("quantize_checkpoint quantizes to uniform integer weights; got "
                              f"QuantSpec(dtype={spec.dtype.value!r}, levels="
                              f"{spec.levels.value!r}).")
        if spec.granularity is Granularity.PER_TENSOR:
            raise invalid("QuantConfig.weights.granularity",
                          "'per_channel' or 'per_group' for quantize_checkpoint", "per_tensor")


def _check_calibration(config: QuantConfig, calibration: torch.Tensor | None) -> None:
    if config.rounding is not Rounding.GPTQ and not config.awq:
        return
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or \
            calibration.is_floating_point() or calibration.numel() == 0:
        raise DataError("GPTQ and AWQ need calibration token ids: an integer tensor "
                        f"[samples, tokens]; got {_describe(calibration)}.")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


@dataclasses.dataclass
class Decoder:
    """The parts of a decoder-only causal LM (Llama, Mistral, Qwen2 layout)."""

    model: nn.Module
    blocks: nn.ModuleList
    embed: str  # module names inside `model`
    rotary: str
    norm: str
    head: str
    block_prefix: str


def decoder_parts(model: nn.Module) -> Decoder:
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, n) for n in needed) or not hasattr(
            model, "lm_head"):
        raise ModelError(f"{type(model).__name__} is not a Llama-style decoder (model."
                         "{embed_tokens, layers, norm, rotary_emb} and lm_head); "
                         "quantize_checkpoint supports that layout.")
    return Decoder(model, inner.layers, "model.embed_tokens", "model.rotary_emb", "model.norm",
                   "lm_head", "model.layers")


# ---- one block ------------------------------------------------------------------------------

def _linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if type(m) is nn.Linear}


@torch.no_grad()
def _capture_inputs(block: nn.Module, run: Callable[[], None], names: list[str]
                    ) -> dict[str, torch.Tensor]:
    """Each named Linear's input rows [tokens, features] while `run()` drives the block."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [block.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append(args[0].reshape(-1, args[0].shape[-1])))
        for n in names]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return {n: torch.cat(rows) for n, rows in seen.items()}


@torch.no_grad()
def _awq(block: nn.Module, inputs: dict[str, torch.Tensor], config: QuantConfig, prefix: str,
         notes: dict[str, dict[str, Any]]) -> None:
    """Search each group's scale on its real inputs and fold it (exact in float)."""
    for producer_name, names in AWQ_GROUPS:
        layers = [block.get_submodule(n) for n in names]
        spec = spec_for(f"{prefix}.{names[0]}", layers[0], config)
        s, alpha, before, after = search_scale(inputs[names[0]].float(),
                                               [layer.weight for layer in layers], spec)
        for layer in layers:
            layer.weight.mul_(s)
        producer = block.get_submodule(producer_name)
        if isinstance(producer, nn.Linear):  # its output rows feed the group's columns
            producer.weight.div_(s.unsqueeze(1))
            if producer.bias is not None:
                producer.bias.div_(s)
        else:  # RMSNorm / LayerNorm: the per-channel gain
            producer.weight.div_(s)
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s)
        for name in names:
            notes.setdefault(f"{prefix}.{name}", {}).update(
                awq_alpha=alpha, awq_loss_nearest=before, awq_loss=after)


@torch.no_grad()
def quantize_block(block: nn.Module, config: QuantConfig, prefix: str,
                   run: Callable[[], None] | None, notes: dict[str, dict[str, Any]], *,
                   reader: SafetensorsReader | None = None) -> None:
    """Quantize every Linear of `block` in place (`prefix` is its name in the model, for
    overrides and exclusions). `run()` drives the float block on its calibration inputs
    (needed for AWQ and GPTQ). With a `reader` the block arrives without weights (rounding to
    nearest needs no block run): its other modules are read first, then each Linear just before
    it is quantized, its rows a slice at a time, so one slice of float weights is in memory."""
    names = [n for n, m in _linears(block).items()
             if not any(qgraph.matches(_join(prefix, n), m, p) for p in config.exclude)]
    if reader is not None:
        _read_all_but(block, prefix, set(names), reader.load)
    if config.awq and run is not None:
        wanted = sorted({n for _, group in AWQ_GROUPS for n in group})
        _awq(block, _capture_inputs(block, run, wanted), config, prefix, notes)
    inputs = _capture_inputs(block, run, names) if config.rounding is Rounding.GPTQ \
        and run is not None else {}
    builder = LayerBuilder(config)
    for name in names:
        layer = block.get_submodule(name)
        _check_group(_join(prefix, name), layer, config)
        spec = spec_for(_join(prefix, name), layer, config)
        rows = None
        if reader is not None:  # mapped, not read: only the slices read below become resident
            reader.load(_join(prefix, name), layer)
            rows = partial(reader.rows, f"{_join(prefix, name)}.weight")
        quantized = build_in_chunks(builder, layer, spec, keep_reference=name in inputs,
                                    rows=rows)
        if name in inputs:
            _gptq(quantized, inputs.pop(name), config)
        vars(quantized).pop("reference_weight", None)  # a float copy, no longer needed
        qgraph._replace_submodule(block, name, quantized)
        del layer, rows  # its float weight goes now
        notes.setdefault(_join(prefix, name), {}).update(
            bits=spec.bits, group_size=spec.group_size, rounding=config.rounding.value)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _read_all_but(block: nn.Module, prefix: str, later: set[str],
                  read: Callable[[str, nn.Module], None]) -> None:
    """Read the modules of `block` that hold tensors themselves, except those in `later`."""
    for name, module in block.named_modules():
        owns = any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False))
        if owns and name not in later:
            read(_join(prefix, name), module)


def build_in_chunks(builder: LayerBuilder, layer: nn.Linear, spec: QuantSpec, *,
                    keep_reference: bool = True, chunk: int | None = None,
                    rows: Callable[[int, int], torch.Tensor] | None = None) -> nn.Module:
    """`builder.build`, a slice of `chunk` output features at a time for grouped weights (by
    default about CHUNK_VALUES weights): each group's scale belongs to one output feature, so
    the integers are the same as in one piece while the float temporaries (transposed, expanded
    scales, rounding) stay a slice's size; a whole layer needs about five float copies of its
    weight. `rows(start, stop)` reads output rows of the weight (default: `layer.weight`)."""
    chunk = chunk or max(1, CHUNK_VALUES // layer.in_features)
    if spec.granularity is not Granularity.PER_GROUP or layer.out_features <= chunk:
        return builder.build(layer, spec)
    whole, full, references = None, {}, []
    for start in range(0, layer.out_features, chunk):
        piece = nn.Linear(layer.in_features, min(chunk, layer.out_features - start),
                          bias=layer.bias is not None, device="meta")
        stop = min(start + chunk, layer.out_features)
        weight = rows(start, stop) if rows else layer.weight[start:stop]
        piece.weight = nn.Parameter(weight.to(layer.weight.dtype), requires_grad=False)
        if layer.bias is not None:
            piece.bias = nn.Parameter(layer.bias[start:start + chunk], requires_grad=False)
        part = builder.build(piece, spec)
        reference = vars(part).pop("reference_weight")
        if keep_reference:  # else one slice's float copy at a time
            references.append(reference)
        if whole is None:  # the whole layer's buffers, filled slice by slice (no second copy)
            whole = part
            full = {key: _widened(getattr(part, key), dim, layer.out_features)
                    for key, dim in _SLICED.items() if getattr(part, key) is not None}
        for key, tensor in full.items():
            tensor.narrow(_SLICED[key], start, piece.out_features).copy_(getattr(part, key))
        del part
    for key, tensor in full.items():
        setattr(whole, key, tensor)
    if keep_reference:  # GPTQ reads it
        whole.reference_weight = torch.cat(references, dim=1)
    return whole


# GroupedLinear's buffers and their output-feature axis
_SLICED = {"weight_q": 1, "weight_scale": 1, "weight_zero_point": 1, "bias": 0}


def _widened(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(tensor.shape)
    shape[dim] = size
    return tensor.new_empty(shape)


def _check_group(name: str, layer: nn.Linear, config: QuantConfig) -> None:
    size = spec_for(name, layer, config).group_size
    if size is not None and layer.in_features % size:
        raise ConfigError(f"QuantSpec.group_size={size} does not divide the {layer.in_features} "
                          f"input features of layer {name!r}; use a divisor of every Linear's "
                          "input width.")


def _gptq(layer: nn.Module, inputs: torch.Tensor, config: QuantConfig) -> None:
    scale, zero, qmin, qmax = layer.integer_grid()
    weight = layer.__dict__["reference_weight"].reshape(scale.shape)
    q = _gptq_layer(layer, weight, scale, zero, qmin, qmax, inputs.float(), config)
    layer.set_integer_weight(q)


# ---- the whole decoder ------------------------------------------------------------------------

class _Head(nn.Module):
    """Token ids -> (hidden states, cos, sin): the embedding and the rotary position tables."""

    def __init__(self, embed: nn.Module, rotary: nn.Module, positions: int) -> None:
        super().__init__()
        self.embed, self.rotary = embed, rotary
        self.model_positions = positions

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.embed(ids)
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        cos, sin = self.rotary(hidden, positions)
        return hidden, cos, sin


class _Block(nn.Module):
    """(hidden, cos, sin) -> hidden: one decoder block with causal attention and no cache."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> torch.Tensor:
        out = self.block(hidden, attention_mask=None, position_embeddings=(cos, sin),
                         use_cache=False)
        return out[0] if isinstance(out, tuple) else out


class _Tail(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))


@torch.no_grad()
def _run_blocks(parts: Decoder, config: QuantConfig, calibration: torch.Tensor | None,
                reader: SafetensorsReader | None, free: Callable[[nn.Module], None],
                emit: Callable[[str, nn.Module, tuple[torch.Tensor, ...]], None],
                notes: dict[str, dict[str, Any]]) -> None:
    """The per-block driver shared by the streamed and the in-memory (`reader` None) paths."""
    model = parts.model
    load = reader.load if reader is not None else _loaded
    tail = _quantized_tail(parts, config, reader, free, notes)
    head = _Head(model.get_submodule(parts.embed), model.get_submodule(parts.rotary),
                 model.config.max_position_embeddings)
    load(parts.embed, head.embed)
    load(parts.rotary, head.rotary)  # its frequency table is computed, not stored
    ids = calibration if calibration is not None else torch.zeros(1, 8, dtype=torch.long)
    hidden, cos, sin = head(ids)
    emit("head", head, (ids[:1],))
    free(head.embed)
    del head
    wanted = calibration is not None and (config.awq or config.rounding is Rounding.GPTQ)
    for index, block in enumerate(parts.blocks):
        name = f"{parts.block_prefix}.{index}"
        step = _Block(block)
        if wanted:  # GPTQ / AWQ run the float block on its inputs
            load(name, block)
            quantize_block(block, config, name, partial(step, hidden, cos, sin), notes)
            hidden = step(hidden, cos, sin)  # the next block learns from this quantized one
        else:
            quantize_block(block, config, name, None, notes, reader=reader)
        emit(name, step, (hidden[:1], cos[:1], sin[:1]))
        free(block)
    emit("tail", tail, (hidden[:1],))


def _loaded(name: str, module: nn.Module) -> None:
    """In memory: every module already has its weights."""


def _quantized_tail(parts: Decoder, config: QuantConfig, reader: SafetensorsReader | None,
                    free: Callable[[nn.Module], None], notes: dict[str, dict[str, Any]]) -> _Tail:
    """The final norm and lm_head, quantized (round to nearest: it needs no inputs). Done first,
    before the exporter's own memory is in use: lm_head is the largest single weight."""
    model = parts.model
    tail = _Tail(model.get_submodule(parts.norm), model.get_submodule(parts.head))
    load = reader.load if reader is not None else _loaded
    load(parts.norm, tail.norm)
    if not any(qgraph.matches(parts.head, tail.head, p) for p in config.exclude):
        holder = nn.ModuleDict({parts.head: tail.head})
        quantize_block(holder, config, "", None, notes, reader=reader)
        free(tail.head)  # the float weight, which the model still refers to
        tail.head = holder[parts.head]
    else:
        load(parts.head, tail.head)
    return tail


def quantize_decoder(model: nn.Module, config: QuantConfig,
                     calibration: torch.Tensor | None = None) -> nn.Module:
    """The in-memory path: quantize a loaded decoder block by block, in place; returns it."""
    check_streamable(config)
    _check_calibration(config, calibration)
    parts = decoder_parts(model)
    model.eval()

    def keep_head(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if name == "tail":
            model.lm_head = module.head

    _run_blocks(parts, config, calibration, None, lambda m: None, keep_head, {})
    return model


def quantize_checkpoint(source: str | Path, out_dir: str | Path, config: QuantConfig, *,
                        calibration: torch.Tensor | None = None, export: bool = True,
                        save_tensors: bool = False, opset: int = 21) -> StreamResult:
    """Quantize the transformers checkpoint folder `source` (config.json + *.safetensors) block
    by block and write `out_dir/model.onnx` with its weights in `out_dir/model.onnx.data`
    (with `export`), and each piece's quantized tensors as `out_dir/tensors/<piece>.safetensors`
    (with `save_tensors`: the embedding as "head", each block by its name, the final norm and
    lm_head as "tail")."""
    check_streamable(config)
    _check_calibration(config, calibration)
    folder, out = Path(source), Path(out_dir)
    _large_allocations_mapped()
    reader = SafetensorsReader(folder)
    model = _meta_model(folder)
    parts = decoder_parts(model)
    notes: dict[str, dict[str, Any]] = {}
    writer = stream_onnx.StitchedWriter(out / "model.onnx", opset) if export else None
    tensors: list[Path] = []

    def emit(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if writer is not None and name == "head":
            table = module.embed.weight  # mapped; written a slice at a time from the file
            writer.add_head(name, partial(reader.rows, f"{parts.embed}.weight"),
                            tuple(table.shape), *_position_tables(module))
        elif writer is not None:  # the blocks share one graph; lm_head is exported narrow
            writer.add(name, module, args, shared="block" if isinstance(module, _Block) else None,
                       narrow="head" if isinstance(module, _Tail) else None)
        if save_tensors:
            tensors.append(stream_onnx.save_state(module, out / "tensors" / f"{name}.safetensors"))

    _run_blocks(parts, config, calibration, reader, _to_meta, emit, notes)
    path = writer.finish() if writer is not None else None
    return StreamResult(onnx=path, external_data=writer.data_path if writer else None,
                        tensors=tensors, blocks=len(parts.blocks), layers=notes)


@torch.no_grad()
def _position_tables(head: _Head) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position the model takes: [positions, dim]."""
    positions = head.model_positions
    cos, sin = head.rotary(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
    return cos[0], sin[0]


# ---- lazy weights ---------------------------------------------------------------------------

def _meta_model(folder: Path) -> nn.Module:
    """The model's modules with no storage: parameters on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ModelError(f"{str(folder)!r} has no config.json; give a transformers "
                         "checkpoint folder (config.json + *.safetensors).")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.eval()


class SafetensorsReader:
    """Tensor name -> shard, read one module at a time (each shard is opened, its tensors
    copied out, and closed again, so no mapping of the whole checkpoint stays resident)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self._open = safe_open
        self.files: dict[str, Path] = {}
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise ModelError(f"{str(folder)!r} has no .safetensors weights.")
        for shard in shards:
            with safe_open(str(shard), "pt") as handle:
                self.files.update(dict.fromkeys(handle.keys(), shard))
        self.tied = _tied(folder)

    def load(self, prefix: str, module: nn.Module) -> None:
        """Give `module` (named `prefix` in the model) real storage and its weights."""
        rebuilt = _rebuild_buffers(module)
        module.to_empty(device="cpu", recurse=True)
        for name, buffer in rebuilt.items():
            _set(module, name, buffer)
        wanted = {f"{prefix}.{k}" if prefix else k: k for k in module.state_dict()}
        by_file: dict[Path, list[str]] = {}
        for full in wanted:
            by_file.setdefault(self._file(full), []).append(full)
        for shard, names in by_file.items():
            with self._open(str(shard), "pt") as handle:
                for full in names:
                    _set(module, wanted[full], handle.get_tensor(self._key(full)))

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the 2-D tensor `name`, read alone (its own small mapping, gone
        with the returned tensor), so a large weight read in slices never becomes resident."""
        with self._open(str(self._file(name)), "pt") as handle:
            return handle.get_slice(self._key(name))[start:stop]

    def _key(self, name: str) -> str:
        if name not in self.files and name == "lm_head.weight" and self.tied:
            return "model.embed_tokens.weight"
        return name

    def _file(self, name: str) -> Path:
        key = self._key(name)
        if key not in self.files:
            raise ModelError(f"the checkpoint has no tensor {key!r}; it does not match its "
                             "config.json.")
        return self.files[key]


def _tied(folder: Path) -> bool:
    return bool(json.loads((folder / "config.json").read_text()).get("tie_word_embeddings"))


def _rebuild_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Non-persistent buffers (rotary frequencies) are computed at construction, not stored:
    rebuild the modules that hold them from their config, on the CPU."""
    rebuilt = {}
    for name, sub in module.named_modules():
        if sub._non_persistent_buffers_set and hasattr(sub, "config"):
            fresh = type(sub)(config=sub.config)
            for key in sub._non_persistent_buffers_set:
                rebuilt[f"{name}.{key}" if name else key] = getattr(fresh, key)
    return rebuilt


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    current = getattr(owner, attr)
    if isinstance(current, nn.Parameter):
        current.data = value.to(current.dtype)
    else:
        setattr(owner, attr, value.to(current.dtype) if current is not None else value)


def _to_meta(module: nn.Module) -> None:
    """Drop a finished module's storage (it was written), with the float copies quantized
    layers keep outside their state (`reference_weight`)."""
    module.to("meta")
    for sub in module.modules():
        for key in [k for k, v in vars(sub).items() if isinstance(v, torch.Tensor)]:
            delattr(sub, key)
    _trim_heap()


def _large_allocations_mapped() -> None:
    """glibc serves allocations below a threshold from its heap and raises that threshold as
    large blocks are freed, so a block's freed temporaries stay resident; a fixed 1 MiB
    threshold maps every large tensor and unmaps it when freed."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them for reuse otherwise, and the
    exporter's many small allocations fragment it): the next block starts from a low base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
