"""PyTorch -> one self-contained .onnx file via the dynamo exporter, checked in ONNX Runtime.

Custom op translations (e.g. the quantizer's fake-quant ops -> QuantizeLinear/DequantizeLinear)
live in a module-level table keyed by torch op overload; every export passes it to the exporter.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgeopt.atomic import ensure_writable_dir, write_bytes
from edgeopt.data import model_arguments
from edgeopt.errors import ConfigError, ConfigTypeError, ExportError, invalid

MIN_OPSET = 18  # the dynamo exporter silently raises anything lower to 18; say so instead
BATCH, SEQUENCE = "batch", "sequence"  # the dynamic axes, as named in the ONNX inputs

_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {}
_HOOKS_LOADED = False


def load_export_hooks() -> None:
    """Import every edgeopt package's `onnx_hooks` module (its translations and graph passes
    register themselves). Deferred to the first use of the exporter, so that code that never
    exports (training, a search trial) does not pay for importing onnxscript."""
    global _HOOKS_LOADED
    if _HOOKS_LOADED:
        return
    _HOOKS_LOADED = True  # first: the hooks themselves call register_translation
    import edgeopt

    for hooks in sorted(Path(edgeopt.__path__[0]).glob("*/onnx_hooks.py")):
        importlib.import_module(f"edgeopt.{hooks.parent.name}.onnx_hooks")


def register_translation(
    torch_op: Callable[..., Any],
    onnxscript_fn: Callable[..., Any] | None = None,
    *,
    replace: bool = False,
) -> Any:
    """Register an ONNX Script function that translates `torch_op` (an op overload).

    Usable directly, `register_translation(torch.ops.ns.op.default, fn)`, or as a decorator,
    `@register_translation(torch.ops.ns.op.default)`. Returns the function. A packet such as
    `torch.ops.ns.op` means its `.default` overload. Registering an op twice raises unless
    `replace=True`.
    """
    load_export_hooks()  # so that replace=True overrides a built-in one, not the reverse
    if isinstance(torch_op, torch._ops.OpOverloadPacket):
        torch_op = torch_op.default
    if not callable(torch_op):
        raise ConfigTypeError(
            f"register_translation.torch_op must be a torch op overload; got {torch_op!r}."
        )

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise ConfigTypeError(
                f"register_translation.onnxscript_fn must be callable; got {fn!r}."
            )
        if torch_op in _TRANSLATIONS and not replace:
            raise ConfigError(
                f"a translation for {torch_op} is already registered; pass replace=True "
                "to override it."
            )
        _TRANSLATIONS[torch_op] = fn
        return fn

    return add if onnxscript_fn is None else add(onnxscript_fn)


def unregister_translation(torch_op: Callable[..., Any]) -> None:
    """Remove a registered translation (no error if absent)."""
    load_export_hooks()
    if isinstance(torch_op, torch._ops.OpOverloadPacket):
        torch_op = torch_op.default
    _TRANSLATIONS.pop(torch_op, None)


PostProcess = Callable[[nn.Module, onnx.ModelProto], None]
_POSTPROCESS: list[PostProcess] = []


def register_postprocess(fn: PostProcess) -> PostProcess:
    """Run `fn(model, proto)` on every exported graph before it is saved (e.g. int4 packing)."""
    load_export_hooks()
    if fn not in _POSTPROCESS:
        _POSTPROCESS.append(fn)
    return fn


def _model_requirements(model: nn.Module, opset: int, atol: float) -> tuple[int, float]:
    """Modules may declare `min_opset` (ops they export need) and `export_tolerance` (how far
    integer kernels may legitimately differ from the float simulation, relative to output scale)."""
    for module in model.modules():
        opset = max(opset, getattr(module, "min_opset", opset))
        atol = max(atol, getattr(module, "export_tolerance", atol))
    return opset, atol


def translations() -> dict[Callable[..., Any], Callable[..., Any]]:
    """A copy of the registered custom translations."""
    load_export_hooks()
    return dict(_TRANSLATIONS)


def postprocesses() -> list[PostProcess]:
    """The registered graph passes, in registration order."""
    load_export_hooks()
    return list(_POSTPROCESS)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    dynamic_sequence: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export `model` (in eval mode) to a single .onnx file with every weight embedded.

    The batch dimension is dynamic when `dynamic_batch`; with `dynamic_sequence` too, so is
    every later axis of an integer input (token ids: the sequence length, named "sequence").
    A model that cannot be exported that way falls back to the example's sequence length, then
    to its batch (warned, and recorded as the metadata props `edgeopt.dynamic_batch` and
    `edgeopt.dynamic_sequence`). With `check`, the file is run in ONNX Runtime on
    `example_input`, and on a doubled batch (and one token less) when those are dynamic, and
    must match PyTorch within `atol` times the output scale. The file is written atomically:
    on any error no file is left at `path`.
    """
    args = _validate(model, example_input, opset, atol)
    opset, atol = _model_requirements(model, opset, atol)
    target = Path(path)
    ensure_writable_dir(target.parent, what="export_onnx")  # before the slow export
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        wanted = _wanted_axes(args, dynamic_batch, dynamic_sequence)
        program, axes = _export_with_fallback(model, args, opset, wanted)
        data = _serialize(program, model, opset, axes)
        if check:
            _check(data, args, model, atol)
            while axes and not _runs_at_other_shape(data, args, model, atol, axes):
                _warn_static(model, args, axes[-1], "it gives wrong results at another size", 3)
                axes = axes[:-1]
                program = _export(model, args, opset, _dynamic_shapes(args, axes))
                data = _serialize(program, model, opset, axes)
                _check(data, args, model, atol)
    finally:
        for module, flag in flags.items():
            module.training = flag
    return write_bytes(target, data)


def _serialize(program: Any, model: nn.Module, opset: int, axes: tuple[str, ...]) -> bytes:
    proto = program.model_proto
    for postprocess in postprocesses():
        postprocess(model, proto)
    _store_raw(proto.graph)
    _strip_debug_info(proto.graph)
    if SEQUENCE in axes:
        _name_sequence_axes(proto.graph)
    _add_metadata(proto, model, opset, axes)
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ExportError(
            f"the exported model is too large for one .onnx file (protobuf 2 GB limit): {exc}"
        ) from exc


def _store_raw(graph: onnx.GraphProto) -> None:
    """Store every initializer as packed raw bytes: typed fields encode int8 as varints of up to
    10 bytes each, which made int8 files nearly as large as float ones."""
    from onnx import numpy_helper

    for index, tensor in enumerate(graph.initializer):
        if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            continue
        graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor),
                                                                  tensor.name))


def _strip_debug_info(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node stack traces and names of torch modules: on small models they
    were 40 % of the file; a deployed artifact's size should be weights and graph only."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del graph.value_info[:]  # intermediate shapes: the runtime infers them again at load


def _runs_at_other_shape(
    data: bytes, args: tuple[torch.Tensor, ...], model: nn.Module, atol: float,
    axes: tuple[str, ...],
) -> bool:
    """A 'dynamic' export can still bake the example's sizes into a Reshape: try batch 2B (and
    one token less where the sequence is dynamic)."""
    other = []
    for arg in args:
        arg = torch.cat([arg, arg]) if BATCH in axes else arg
        if SEQUENCE in axes and _is_sequence(arg) and arg.shape[1] > 2:
            arg = arg[:, :-1]
        other.append(arg)
    try:
        _check(data, tuple(other), model, atol)
    except Exception:
        return False
    return True


def _warn_static(
    model: nn.Module, args: tuple[torch.Tensor, ...], axis: str, why: str, depth: int
) -> None:
    """Warn at the caller of export_onnx, `depth` frames up."""
    size = args[0].shape[0] if axis == BATCH else next(
        (a.shape[1] for a in args if _is_sequence(a)), None)
    what = "batch" if axis == BATCH else "sequence length"
    warnings.warn(
        f"{type(model).__name__} cannot have a dynamic {what} ({why}); exported with a fixed "
        f"{what} of {size} instead (metadata edgeopt.dynamic_{axis}=false).",
        stacklevel=depth,
    )


def _validate(model: Any, example_input: Any, opset: Any, atol: Any) -> tuple[torch.Tensor, ...]:
    args = model_arguments(model, example_input, "export_onnx")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise invalid("export_onnx.opset", f"an int >= {MIN_OPSET} (the exporter's minimum)", opset)
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not atol >= 0:
        raise invalid("export_onnx.atol", "a float >= 0", atol)
    return args


def _is_sequence(arg: torch.Tensor) -> bool:
    """Token ids: an integer tensor with axes after the batch (their length may vary)."""
    return arg.dim() >= 2 and not arg.is_floating_point() and not arg.is_complex()


def _wanted_axes(
    args: tuple[torch.Tensor, ...], dynamic_batch: bool, dynamic_sequence: bool
) -> tuple[str, ...]:
    if not dynamic_batch:
        return ()
    if dynamic_sequence and any(_is_sequence(a) and a.shape[1] > 1 for a in args):
        return (BATCH, SEQUENCE)
    return (BATCH,)


def _dynamic_shapes(args: tuple[torch.Tensor, ...], axes: tuple[str, ...]) -> Any:
    """torch.export dynamic_shapes for the dynamic axes (None when there are none)."""
    if not axes:
        return None
    batch = torch.export.Dim("batch")  # one Dim shared by all inputs: their batches stay equal
    shapes = []
    for arg in args:
        dims: dict[int, Any] = {0: batch}
        if SEQUENCE in axes and _is_sequence(arg):  # DYNAMIC: a model may bound it (<= 512)
            dims.update({axis: torch.export.Dim.DYNAMIC for axis in range(1, arg.dim())})
        shapes.append(dims)
    return tuple(shapes)


def _export_with_fallback(
    model: nn.Module, args: tuple[torch.Tensor, ...], opset: int, axes: tuple[str, ...]
) -> tuple[Any, tuple[str, ...]]:
    """Export with the wanted dynamic axes; where that fails, with fewer (sequence, then batch
    static), warning about each one given up."""
    while axes:
        try:
            return _export(model, args, opset, _dynamic_shapes(args, axes)), axes
        except ExportError as exc:
            _warn_static(model, args, axes[-1], str(exc), 4)
            axes = axes[:-1]
    return _export(model, args, opset, None), ()  # if this fails too, its error is the real one


def _name_sequence_axes(graph: onnx.GraphProto) -> None:
    """Call the symbolic axis 1 of integer inputs "sequence" (the exporter names it s<N>)."""
    names = {}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].dim_param and value.type.tensor_type.elem_type in (
                onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            names[dims[1].dim_param] = SEQUENCE
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def _export(
    model: nn.Module, args: tuple[torch.Tensor, ...], opset: int, dynamic_shapes: Any
) -> Any:
    try:
        with _silenced(), _reused_torchlib_registry():
            return torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translations() or None,
                external_data=False,
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter raises many types; one ExportError says what failed
        raise ExportError(_describe_failure(model, exc)) from exc


_TORCHLIB: dict[int, Any] = {}  # opset -> the exporter's torchlib registry, built once


@contextlib.contextmanager
def _reused_torchlib_registry() -> Iterator[None]:
    """Let the exporter copy one torchlib registry instead of rebuilding it on every export.

    torch.onnx.export looks up ~500 torchlib functions each call (about 1.7 s here, a third of a
    small model's export). The registry is a dict of lists that `register_op` appends to, so a
    copy with fresh lists is as good as a new one. Private API of the pinned torch: if it is not
    there, exports build their own registry as before."""
    try:
        from torch.onnx._internal.exporter import _registration
        build = _registration.ONNXRegistry.__dict__["from_torchlib"]
    except (ImportError, KeyError):
        yield
        return

    def copied(cls: type, *args: Any, **kwargs: Any) -> Any:
        opset = kwargs.get("opset_version", args[0] if args else None)
        if opset not in _TORCHLIB:
            _TORCHLIB[opset] = build.__func__(cls, *args, **kwargs)
        registry = cls()
        registry._opset_version = _TORCHLIB[opset]._opset_version
        registry.functions = {k: list(v) for k, v in _TORCHLIB[opset].functions.items()}
        return registry

    _registration.ONNXRegistry.from_torchlib = classmethod(copied)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = build


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Swallow the exporter's prints, warnings and log lines (it logs through many loggers, some
    of them error-level with whole tracebacks, and C++ code writes to the file descriptors
    directly): a failed attempt that export_onnx recovers from must not flood the terminal.
    Its error still reaches the caller as an exception."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            _descriptors_to_sink(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _descriptors_to_sink() -> Iterator[None]:
    """Point file descriptors 1 and 2 at a temporary file for the duration (where they exist)."""
    import sys
    import tempfile

    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        try:
            for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
                with contextlib.suppress(Exception):
                    stream.flush()
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _describe_failure(model: nn.Module, exc: BaseException) -> str:
    """Name the unsupported op and, where the exporter's traceback knows it, the module."""
    name = type(model).__name__
    chain = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__
    text = "\n".join(str(c) for c in chain)
    op = re.search(
        r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text
    )
    if op:
        where = _failing_module(chain)
        return (
            f"cannot export {name} to ONNX: no ONNX translation for {op[1]}.{op[2]}"
            f"{where}. Replace that layer, or register a translation with "
            "edgeopt.export.onnx.register_translation."
        )
    root = chain[-1]
    summary = str(root).strip().splitlines()[0] if str(root).strip() else ""
    stage = (
        "torch.export could not trace"
        if "TorchExportError" in type(exc).__name__
        else "cannot export"
    )
    call = re.search(r'raised this error:\s*File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text)
    where = f" at {Path(call[1]).name}:{call[2]} in {call[3]}: `{call[4].strip()}`" if call else ""
    return f"{stage} {name}{where}: {type(root).__name__}: {summary[:300]}"


def _failing_module(chain: list[BaseException]) -> str:
    """Best effort: find the fx node being translated in the traceback and read its module."""
    for error in chain:
        tb = error.__traceback__
        while tb is not None:
            node = tb.tb_frame.f_locals.get("node")
            if isinstance(node, torch.fx.Node):
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    path, kind = list(stack.values())[-1]
                    kind_name = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
                    return (
                        f" in module {path.removeprefix('L__self__.') or '<root>'!r} ({kind_name})"
                    )
                return f" (node {node.name})"
            tb = tb.tb_next
    return ""


def _add_metadata(
    proto: onnx.ModelProto, model: nn.Module, opset: int, axes: tuple[str, ...]
) -> None:
    from edgeopt import __version__

    props = {
        "producer": "edgeopt",
        "edgeopt.version": __version__,
        "edgeopt.torch_version": torch.__version__,
        "edgeopt.model_class": type(model).__name__,
        "edgeopt.opset": str(opset),
        "edgeopt.dynamic_batch": str(BATCH in axes).lower(),
        "edgeopt.dynamic_sequence": str(SEQUENCE in axes).lower(),
    }
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value


def _check(data: bytes, args: tuple[torch.Tensor, ...], model: nn.Module, atol: float) -> None:
    """Run the serialized model in ONNX Runtime and compare with the PyTorch outputs."""
    import onnxruntime as ort

    with torch.no_grad():
        reference = model(*args)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failure comes back as the exception's text
    run_options = ort.RunOptions()
    run_options.log_severity_level = 4
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
        outputs = session.run(None, feeds, run_options)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the exported model: {str(exc)[:500]}") from exc
    expected = [
        t.detach().cpu().numpy()
        for t in torch.utils._pytree.tree_leaves(reference)
        if isinstance(t, torch.Tensor)
    ]
    if len(expected) != len(outputs):
        raise ExportError(
            f"the exported model has {len(outputs)} outputs but PyTorch returned {len(expected)}."
        )
    for index, (ours, theirs) in enumerate(zip(outputs, expected)):
        if ours.shape != theirs.shape:
            raise ExportError(f"output {index} shape {ours.shape} != PyTorch's {theirs.shape}.")
        diff = float(
            np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0)
        )
        scale = max(1.0, float(np.max(np.abs(theirs), initial=0.0)))
        if not diff <= atol * scale:
            from edgeopt.export.divergence import first_divergence

            raise ExportError(
                f"ONNX Runtime output {index} differs from PyTorch: max abs diff {diff:.3g} > "
                f"atol {atol:g} x output scale {scale:.3g}.{first_divergence(data, args, model)}"
                " Check custom translations, or pass a larger atol for quantized models."
            )
