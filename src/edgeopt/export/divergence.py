"""Where an exported quantized model first differs from PyTorch.

Each activation quantizer's integer codes in PyTorch (forward hooks, in call order) are compared
with the matching QuantizeLinear output of ONNX Runtime (exposed as extra graph outputs, in graph
order); the first tensor that differs names the layer that produced it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
from torch import nn

_ELEM_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}


def first_divergence(data: bytes, args: tuple[torch.Tensor, ...], model: nn.Module) -> str:
    """A sentence naming the first quantized tensor that differs, or "" if none can be found
    (a model without activation quantizers, or one whose quantizers do not line up)."""
    try:
        ours = _torch_codes(model, args)
        theirs = _runtime_codes(data, args)
    except Exception:  # a diagnosis must never hide the error it explains
        return ""
    if not ours or len(ours) != len(theirs):
        return ""
    first = None
    for index, ((name, codes), deployed) in enumerate(zip(ours, theirs)):
        if deployed.shape != codes.shape:
            return ""
        off = np.abs(deployed.astype(np.int64) - codes.astype(np.int64))
        worst = int(off.max(initial=0))
        if worst > 1 or (worst == 1 and first is None):
            first = (index, name, int((off > 0).sum()), off.size, worst)
            if worst > 1:
                break
    if first is None:
        return ""
    index, name, count, size, worst = first
    return (f" The first quantized tensor that differs is {_describe(model, name, index, ours)}: "
            f"{count} of {size} values differ, by up to {worst} quantization steps.")


def _torch_codes(model: nn.Module, args: tuple[torch.Tensor, ...]) -> list[tuple[str, np.ndarray]]:
    from edgeopt.quantization.modules import ActQuant

    codes: list[tuple[str, np.ndarray]] = []

    def record(name: str) -> Any:
        def hook(module: ActQuant, inputs: tuple, output: torch.Tensor) -> None:
            q = torch.round(output / module.scale) + module.zero_point.float()
            codes.append((name, q.detach().cpu().numpy()))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
             if isinstance(m, ActQuant) and m.frozen]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return codes


def _runtime_codes(data: bytes, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    proto = onnx.load_from_string(data)
    types = {t.name: t.data_type for t in proto.graph.initializer}
    names = []
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            elem = types.get(node.input[2]) if len(node.input) > 2 else None
            names.append(node.output[0])
            proto.graph.output.append(onnx.helper.make_tensor_value_info(
                node.output[0], elem if elem in _ELEM_TYPES else onnx.TensorProto.UINT8, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
    return session.run(names, feeds)


def _describe(model: nn.Module, name: str, index: int, calls: list[tuple[str, Any]]) -> str:
    """"the output of 'blocks.1.expand.0' (Conv2d), quantized by 'act_quant_5'"."""
    quantized_by = f"quantized by {name!r}"
    if not isinstance(model, fx.GraphModule):
        return f"the one {quantized_by}"
    nth = sum(1 for other, _ in calls[:index] if other == name)
    nodes = [n for n in model.graph.nodes if n.op == "call_module" and n.target == name]
    if nth >= len(nodes) or not nodes[nth].args or not isinstance(nodes[nth].args[0], fx.Node):
        return f"the one {quantized_by}"
    producer = nodes[nth].args[0]
    if _is_activation(model, producer):  # name the layer, not its ReLU6
        producer = producer.args[0]
    if producer.op == "placeholder":
        return f"the model input {producer.name!r}, {quantized_by}"
    if producer.op == "call_module":
        module = model.get_submodule(str(producer.target))
        kind = getattr(module, "float_type", type(module).__name__)
        return f"the output of {str(producer.target)!r} ({kind}), {quantized_by}"
    what = getattr(producer.target, "__name__", str(producer.target))
    return f"the output of {producer.name!r} ({what}), {quantized_by}"


def _is_activation(model: fx.GraphModule, node: fx.Node) -> bool:
    from edgeopt.quantization import graph as qgraph

    return qgraph.is_relu(model, node) and bool(node.args) and isinstance(node.args[0], fx.Node)
