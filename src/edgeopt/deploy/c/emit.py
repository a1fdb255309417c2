"""The integer IR as C99: constant tables (flash) and one call per op into edgeopt_kernels.c.

Each op kind has one emitter returning its declarations, its call and its figures (MACs, constant
bytes); the table `EMITTERS` is the list of what the C back end supports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeopt.deploy import reference
from edgeopt.deploy.c import compress, simd
from edgeopt.deploy.c.plan import OUTPUT, Plan
from edgeopt.deploy.ir import Graph, Op, activation_range
from edgeopt.errors import ExportError

LINEAR_STRUCT_BYTES = 64  # sizeof(eo_linear_t) on a 32-bit core, for the flash estimate
SMALL_STRUCT_BYTES = 48


@dataclass
class Emitted:
    declarations: list[str]
    call: str
    macs: int
    const_bytes: int
    weight_bytes: int = 0
    weight_form: str = ""  # conv / fully connected: dense, int4 or a compress.py form


def c_array(ctype: str, name: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    rows = [", ".join(str(int(v)) for v in flat[i:i + 24]) for i in range(0, len(flat), 24)]
    body = ",\n  ".join(rows) if rows else "0"
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n  {body}\n}};"


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Two signed 4-bit values per byte, the first in the low nibble (a trailing odd value: high nibble 0)."""
    flat = np.asarray(values, np.int64).reshape(-1) & 0xF
    if len(flat) % 2:
        flat = np.append(flat, 0)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _pointer(plan: Plan, name: str) -> str:
    buf = plan.storage[name]
    if buf == OUTPUT:
        return "output"
    return f"(arena + {plan.offsets[buf]})"


def _linear(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    x, w, b = (graph.tensors[n] for n in op.inputs)
    out = graph.tensors[op.outputs[0]]
    tag = f"L{index}"
    form = plan.weight_forms.get(op.inputs[1])
    if form is not None:  # sparse / clustered / narrow: read by edgeopt_kernels_compressed.c
        weight_decls, nbytes, bits = _compressed(f"{tag}_w", form), form.nbytes + compress.STRUCT_BYTES, 0
    else:
        data, ctype, bits = (pack_int4(w.data), "uint8_t", 4) if w.dtype == "int4" else (w.data.astype(np.int8),
                                                                                      "int8_t", 8)
        weight_decls, nbytes = [c_array(ctype, f"{tag}_w", data)], data.nbytes
    decls = [*weight_decls, c_array("int32_t", f"{tag}_b", b.data)]
    if pow2:
        real = np.float64(x.qparams.scale) * w.qparams.scale.astype(np.float64) / np.float64(out.qparams.scale)
        decls.append(c_array("int32_t", f"{tag}_s", reference.pow2_exponent(real, op.name or op.outputs[0])))
        mult = "0"
    else:
        m, s = reference.requantize_params(graph, op)
        decls += [c_array("int32_t", f"{tag}_m", m), c_array("int32_t", f"{tag}_s", s)]
        mult = f"{tag}_m"
    lo, hi = activation_range(op.attrs.get("activation", "none"), out.qparams)
    if op.kind == "fully_connected":
        geometry = [1, 1, x.size, 1, 1, out.size, 1, 1, 1, 1, 1, 1, 0, 0, 1]
        macs = x.size * out.size
    else:
        (_, ih, iw, ic), (_, oh, ow, oc) = x.shape, out.shape
        kh, kw = op.attrs["kernel"]
        geometry = [ih, iw, ic, oh, ow, oc, kh, kw, *op.attrs["stride"], *op.attrs["dilation"],
                    op.attrs["padding"][0], op.attrs["padding"][1], op.attrs.get("depth_multiplier", 1)]
        macs = oh * ow * oc * kh * kw * (ic if op.kind == "conv2d" else 1)
    _check_int16(op, geometry)
    fields = ", ".join(str(int(v)) for v in [*geometry, bits, int(x.qparams.zero_point),
                                               int(out.qparams.zero_point), lo, hi])
    x86 = " EO_X86_FIELDS(0, 0)"  # the portable kernel
    tables = _x86_tables(op, w.data, b.data, int(x.qparams.zero_point)) if bits == 8 else None
    if tables is not None:  # x86 VNNI tables, compiled only there
        decls += ["#if EO_X86_VNNI", c_array("int8_t", f"{tag}_xw", tables[0]),
                  c_array("int32_t", f"{tag}_xb", tables[1]), "#endif"]
        x86 = f" EO_X86_FIELDS({tag}_xw, {tag}_xb)"
    decls.append(f"static const eo_linear_t {tag} = {{{fields}, {tag}_w, {tag}_b, {mult}, {tag}_s{x86}}};")
    scratch = f"(arena + {plan.offsets[plan.scratch[index]]})" if index in plan.scratch else "0"
    src, dst = _pointer(plan, op.inputs[0]), _pointer(plan, op.outputs[0])
    call = f"eo_{op.kind}{'' if form is None else '_compressed'}(&{tag}, {src}, {dst}, {scratch});"
    if op.kind == "depthwise_conv2d" and src == dst:
        call = f"eo_depthwise_conv2d_inplace(&{tag}, {dst}, {scratch});"
    requant = (1 if pow2 else 2) * 4 * out.shape[-1]
    return Emitted(decls, call, macs, nbytes + b.data.size * 4 + requant + LINEAR_STRUCT_BYTES, nbytes,
                   form.form if form is not None else ("int4" if bits == 4 else "dense"))


def _x86_tables(op: Op, w: np.ndarray, b: np.ndarray, in_zp: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The VNNI weight layout and corrected bias the x86 kernels read; None: the portable kernel."""
    if op.kind == "depthwise_conv2d":
        if op.attrs.get("depth_multiplier", 1) != 1:
            return None
        return simd.vnni_depthwise_weights(w), simd.vnni_depthwise_bias(w, b, in_zp)
    segment = None
    if op.kind == "conv2d":
        segment = simd.conv_segment(op.attrs["kernel"][1], op.attrs["dilation"][1], w.shape[-1])
    return simd.vnni_weights(w, segment), simd.vnni_bias(w, b, in_zp)


def _compressed(name: str, form: compress.Encoded) -> list[str]:
    """A compressed weight form as its arrays and an eo_compressed_t (an array of one: the layer's `weights`)."""
    decls = [c_array("uint8_t", f"{name}_v", form.values)]
    if form.bitmap is not None:
        decls.append(c_array("uint8_t", f"{name}_m", form.bitmap))
    if form.codebook is not None:
        decls.append(c_array("int8_t", f"{name}_c", form.codebook))
    bitmap = f"{name}_m" if form.bitmap is not None else "0"
    codebook = f"{name}_c" if form.codebook is not None else "0"
    decls.append(f"static const eo_compressed_t {name}[1] = {{{{{name}_v, {bitmap}, {codebook}, {form.bits}, "
                 f"{form.codebook_stride}}}}};")
    return decls


INT16_MAX = 32767  # the kernels' structs hold sizes as int16_t, as small cores like


def _check_int16(op: Op, geometry: list[int]) -> None:
    """A size the struct cannot hold would wrap and silently give wrong outputs: refuse it."""
    if max(abs(int(v)) for v in geometry) > INT16_MAX:
        raise ExportError(f"op {op.name or op.outputs[0]!r} ({op.kind}) has a size over {INT16_MAX} "
                          f"(sizes {[int(v) for v in geometry]}), which the C kernels cannot hold; "
                          "reduce it before the flatten (e.g. pool to a smaller map) or export to ONNX.")


def _pool(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    x, out = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    (_, ih, iw, c), (_, oh, ow, _) = x.shape, out.shape
    kh, kw = op.attrs["kernel"]
    lo, hi = activation_range(op.attrs.get("activation", "none"), out.qparams)
    reference.check_same_qparams(graph, op.inputs[0], op)
    geometry = [ih, iw, c, oh, ow, kh, kw, *op.attrs["stride"], op.attrs["padding"][0], op.attrs["padding"][1]]
    _check_int16(op, geometry)
    fields = [*geometry, lo, hi]
    decl = f"static const eo_pool_t L{index} = {{{', '.join(str(int(v)) for v in fields)}}};"
    call = f"eo_{op.kind}(&L{index}, {_pointer(plan, op.inputs[0])}, {_pointer(plan, op.outputs[0])});"
    return Emitted([decl], call, oh * ow * c * kh * kw, SMALL_STRUCT_BYTES)


def _mean(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    x, out = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    hw, c = x.shape[1] * x.shape[2], x.shape[3]
    mult, shift = reference.mean_params(float(x.qparams.scale), float(out.qparams.scale), hw)
    fields = [hw, c, int(x.qparams.zero_point), int(out.qparams.zero_point), mult, shift]
    decl = f"static const eo_mean_t L{index} = {{{', '.join(str(int(v)) for v in fields)}}};"
    call = f"eo_mean(&L{index}, {_pointer(plan, op.inputs[0])}, {_pointer(plan, op.outputs[0])});"
    return Emitted([decl], call, hw * c, SMALL_STRUCT_BYTES)


def _add(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    (qa, qb), out = (graph.tensors[n].qparams for n in op.inputs), graph.tensors[op.outputs[0]]
    lo, hi = activation_range(op.attrs.get("activation", "none"), out.qparams)
    if pow2:
        s1, s2, so = reference.add_pow2_shifts(float(qa.scale), float(qb.scale), float(out.qparams.scale))
        params = [0, s1, 0, s2, 0, so]
    else:
        params = [v for pair in reference.add_params(float(qa.scale), float(qb.scale), float(out.qparams.scale))
                  for v in pair]
    fields = [out.size, int(qa.zero_point), int(qb.zero_point), int(out.qparams.zero_point), lo, hi, *params,
              int(pow2)]
    decl = f"static const eo_add_t L{index} = {{{', '.join(str(int(v)) for v in fields)}}};"
    a, b = (_pointer(plan, n) for n in op.inputs)
    return Emitted([decl], f"eo_add(&L{index}, {a}, {b}, {_pointer(plan, op.outputs[0])});", out.size,
                   SMALL_STRUCT_BYTES)


def _reshape(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    reference.check_same_qparams(graph, op.inputs[0], op)
    src, dst = _pointer(plan, op.inputs[0]), _pointer(plan, op.outputs[0])
    call = "" if src == dst else f"eo_copy({src}, {dst}, {graph.tensors[op.outputs[0]].size});"
    return Emitted([], call, 0, 0)


def _concat(graph: Graph, op: Op, index: int, plan: Plan, pow2: bool) -> Emitted:
    for name in op.inputs:
        reference.check_same_qparams(graph, name, op)
    out = graph.tensors[op.outputs[0]]
    axis = op.attrs["axis"]
    outer = int(np.prod(out.shape[:axis]))
    inner = [int(np.prod(graph.tensors[n].shape[axis:])) for n in op.inputs]
    decl = c_array("int32_t", f"L{index}_inner", np.array(inner))
    ins = ", ".join(_pointer(plan, n) for n in op.inputs)
    call = (f"{{ const int8_t *const ins[{len(inner)}] = {{{ins}}}; "
            f"eo_concat({outer}, {len(inner)}, ins, L{index}_inner, {_pointer(plan, op.outputs[0])}); }}")
    return Emitted([decl], call, 0, 4 * len(inner))


EMITTERS: dict[str, Callable[[Graph, Op, int, Plan, bool], Emitted]] = {
    "conv2d": _linear, "depthwise_conv2d": _linear, "fully_connected": _linear, "max_pool2d": _pool,
    "avg_pool2d": _pool, "mean": _mean, "add": _add, "reshape": _reshape, "concat": _concat,
}


def emit_ops(graph: Graph, plan: Plan, pow2: bool) -> list[Emitted]:
    emitted = []
    for index, op in enumerate(graph.ops):
        emitter = EMITTERS.get(op.kind)
        if emitter is None:
            raise ExportError(f"the C back end has no kernel for op {op.kind!r} ({op.name!r}); "
                              f"supported: {', '.join(EMITTERS)}.")
        emitted.append(emitter(graph, op, index, plan, pow2))
    return emitted
