"""Graph surgery for static quantization: fold batch norm, place activation quantizers.

Quantizers are placed where ONNX Runtime fuses QDQ into integer kernels: on the input of every
integer op and on its output, after a ReLU that follows it (the runtime drops a ReLU whose
quantizer already clips at zero). Shape-only ops (max-pool, flatten, reshape) reuse their
input's quantizer so the runtime can run them on uint8 directly.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from edgeopt.errors import ModelError
from edgeopt.quantization.modules import WEIGHT_LAYERS, ActQuant, ChannelClamp

# (layer, batch norm) pairs that fold, and how (Linear + BatchNorm1d: MLPs such as MLPerf Tiny's
# autoencoder, on (N, features) inputs)
_CONV_BN = {(nn.Conv1d, nn.BatchNorm1d): fuse_conv_bn_eval,
            (nn.Conv2d, nn.BatchNorm2d): fuse_conv_bn_eval,
            (nn.Linear, nn.BatchNorm1d): fuse_linear_bn_eval}
aten = torch.ops.aten
_RELUS_MODULES = (nn.ReLU, ChannelClamp)
_RELU_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6,
                   aten.relu.default, aten.relu_.default}
_CLAMP_FUNCTIONS = {aten.hardtanh.default, aten.hardtanh_.default}  # ReLU6 once exported
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd, aten.add.Tensor, aten.add_.Tensor}
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_POOL_FUNCTIONS = {aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool1d.default,
                   aten.avg_pool2d.default, aten.avg_pool1d.default}
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                   torch.nn.functional.max_pool2d, torch.nn.functional.max_pool1d,
                   torch.nn.functional.dropout, aten.flatten.using_ints, aten.view.default,
                   aten.reshape.default, aten.max_pool2d.default, aten.max_pool1d.default,
                   aten.dropout.default, aten.dropout_.default, aten.squeeze.dim,
                   aten.unsqueeze.default, aten.clone.default}
_PASS_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """A graph of `model`: torch.fx symbolic tracing, else torch.export on `example`."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # tracing fails in many ways; all mean the same to a user
        if example is None:
            raise ModelError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}); "
                "pass data so it can be captured with torch.export instead."
            ) from exc
    from edgeopt.quantization.tracing import export_graph

    return export_graph(model, example)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def fold_batch_norm(gm: fx.GraphModule,
                    bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> int:
    """Fold every BatchNorm that directly follows a conv into the conv's weights; count them.

    `bn_stats`, when given, receives {conv name: (beta, |gamma|)}: the mean and standard
    deviation each output channel has after folding, if the batch-norm statistics hold.
    """
    folded = 0
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if bn is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        conv_node = node.args[0]
        conv = _module(gm, conv_node)
        if conv is None or (type(conv), type(bn)) not in _CONV_BN or len(conv_node.users) != 1:
            continue
        if getattr(conv, "out_features", bn.num_features) != bn.num_features:
            continue  # a BatchNorm1d over another axis than the Linear's features
        if bn_stats is not None:
            beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
            gamma = (bn.weight.detach().abs() if bn.weight is not None
                     else torch.ones_like(bn.running_var))
            bn_stats[str(conv_node.target)] = (beta.clone().float(), gamma.clone().float())
        fused = _CONV_BN[type(conv), type(bn)](conv.eval(), bn.eval())
        _replace_submodule(gm, conv_node.target, fused)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return folded


def _replace_submodule(gm: fx.GraphModule, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    setattr(gm.get_submodule(parent_name) if parent_name else gm, child, new)


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """ReLU-like: clips at zero from below (ReLU, ReLU6 in any spelling, per-channel clamps).

    The quantizer goes after it: one placed before a ReLU6 (an exported graph's hardtanh) wasted
    half its levels on negatives and re-quantized the clipped result, so one step of the first
    quantizer became ~36 steps of the second and the runtime diverged from PyTorch.
    """
    module = _module(gm, node)
    if module is not None:  # ReLU6 is a Hardtanh; equalization leaves Hardtanh(0, u)
        return isinstance(module, _RELUS_MODULES) or (isinstance(module, nn.Hardtanh)
                                                      and module.min_val == 0.0)
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS or (
        node.op == "call_method" and node.target == "relu") or is_relu6(gm, node)


def is_relu6(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, nn.ReLU6)
    if node.op == "call_function" and node.target is torch.nn.functional.relu6:
        return True
    return (node.op == "call_function" and node.target in _CLAMP_FUNCTIONS
            and float(_arg_value(node, 1, -1.0)) == 0.0 and float(_arg_value(node, 2, 1.0)) == 6.0)


def clip_upper(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """The one upper bound of a ReLU-like node (inf for ReLU); None for a per-channel clamp."""
    module = _module(gm, node)
    if isinstance(module, ChannelClamp):
        return None
    if isinstance(module, nn.Hardtanh):
        return float(module.max_val)
    return 6.0 if is_relu6(gm, node) else float("inf")


def is_float_tensor(node: fx.Node) -> bool:
    """True unless the graph knows the value is not a float tensor (exported graphs carry it)."""
    value = node.meta.get("val")
    if value is None:
        return True
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _arg_value(node: fx.Node, index: int, default: object) -> object:
    return node.args[index] if len(node.args) > index else default


def is_integer_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops the runtime can run on integers when their inputs and output are quantized."""
    module = _module(gm, node)
    if module is not None:
        return type(module) in WEIGHT_LAYERS or isinstance(module, _POOL_MODULES)
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return is_float_tensor(node) and all(isinstance(a, fx.Node) for a in node.args[:2])
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS


def is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that only move or select values, so their output keeps the input's grid."""
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, _PASS_MODULES)
    if node.op == "call_function" and node.target is aten.pad.default:
        return _arg_value(node, 2, "constant") == "constant" and not _arg_value(node, 3, None)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def matches(name: str, module: nn.Module, pattern: str) -> bool:
    """A layer matches a pattern by name (shell-style wildcards) or by its type's name."""
    return fnmatch.fnmatch(name, pattern) or type(module).__name__ == pattern


def weight_layer_names(gm: fx.GraphModule, exclude: tuple[str, ...]) -> list[str]:
    """Names of the Linear/Conv layers to quantize, skipping those matching `exclude`."""
    names = []
    for node in gm.graph.nodes:
        module = _module(gm, node)
        if module is not None and type(module) in WEIGHT_LAYERS:
            if not any(matches(str(node.target), module, p) for p in exclude):
                names.append(str(node.target))
    return names


def insert_act_quantizers(
    gm: fx.GraphModule, make_quantizer: Callable[[], ActQuant], quantized_layers: set[str]
) -> dict[str, str]:
    """Place activation quantizers; return {weight layer name: its input quantizer name}.

    A value made by a float op is quantized for its integer readers only (a transformer's
    residual stream stays float beside the quantized input of the next Linear), and an add or
    a Linear result is quantized only when an integer op reads it (QLinearAdd needs quantized
    readers to pay; MatMulIntegerToFloat and QGemm write float).
    """
    placer = _Placer(gm, make_quantizer, quantized_layers)
    for node in list(gm.graph.nodes):
        placer.visit(node)
    gm.graph.lint()
    gm.recompile()
    return placer.inputs_of


class _Placer:
    """The state of one placement pass: which values are on which quantizer's grid."""

    def __init__(self, gm: fx.GraphModule, make_quantizer: Callable[[], ActQuant],
                 quantized_layers: set[str]) -> None:
        self.gm, self.make_quantizer, self.quantized_layers = gm, make_quantizer, quantized_layers
        self.source: dict[fx.Node, str] = {}  # node -> the quantizer its value is on the grid of
        self.inputs_of: dict[str, str] = {}
        self.counter = iter(range(10**6))

    def visit(self, node: fx.Node) -> None:
        gm, source = self.gm, self.source
        if node.op == "output" or node in source or isinstance(_module(gm, node), ActQuant):
            return
        if is_pass_through(gm, node) and node.args and node.args[0] in source:
            self.quantize_after(node, source[node.args[0]])
            return
        if not self.wants_integer(node):
            return
        for arg in node.args:
            if isinstance(arg, fx.Node) and arg not in source and is_float_tensor(arg):
                self.quantize_after(arg, readers=self.wants_integer)
        if node.op == "call_module" and str(node.target) in self.quantized_layers:
            self.inputs_of[str(node.target)] = source[node.args[0]]
        _quantize_output(gm, node, self.quantize_after, self.feeds_integer)

    def quantize_after(self, node: fx.Node, name: str | None = None,
                       readers: Callable[[fx.Node], bool] | None = None) -> str:
        """Quantize `node`'s value for all its readers, or only those `readers` accepts."""
        if name is None:
            name = f"act_quant_{next(self.counter)}"
            self.gm.add_submodule(name, self.make_quantizer())
        with self.gm.graph.inserting_after(node):
            q = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q and (
            readers is None or readers(user)))
        self.source[q] = name
        if readers is None:
            self.source[node] = name
        return name

    def wants_integer(self, node: fx.Node) -> bool:
        if node.op == "call_module" and type(_module(self.gm, node)) in WEIGHT_LAYERS:
            return str(node.target) in self.quantized_layers
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            return is_integer_op(self.gm, node) and self.feeds_integer(node)
        return is_integer_op(self.gm, node)

    def feeds_integer(self, node: fx.Node) -> bool:
        """Whether an integer op reads the value, directly or through ReLUs and reshapes."""
        for user in node.users:
            if isinstance(_module(self.gm, user), ActQuant):
                return True
            if is_relu(self.gm, user) or is_pass_through(self.gm, user):
                if self.feeds_integer(user):
                    return True
            elif self.wants_integer(user):
                return True
        return False


def _quantize_output(gm: fx.GraphModule, node: fx.Node, quantize_after: Callable,
                     feeds_integer: Callable[[fx.Node], bool]) -> None:
    """Quantize an integer op's result (after its ReLU), unless only the model output uses it
    or, for a Linear, only float ops read it (its integer kernel writes float)."""
    linear = isinstance(_module(gm, node), nn.Linear)
    users = list(node.users)
    if len(users) == 1 and is_relu(gm, users[0]):
        node = users[0]
        users = list(node.users)
    if all(user.op == "output" for user in users):
        return  # the last layer's float output keeps full precision (QGemm writes float)
    if linear and not feeds_integer(node):
        return
    quantize_after(node)


# --- where ONNX Runtime fuses integer kernels ---------------------------------------------------


def grid_source(gm: fx.GraphModule, node: object) -> ActQuant | None:
    """The quantizer whose grid a value is on: its own, or its input's through pass-through ops."""
    while isinstance(node, fx.Node):
        module = _module(gm, node)
        if isinstance(module, ActQuant):
            return module if module.frozen else None
        if not (is_pass_through(gm, node) and node.args):
            return None
        node = node.args[0]
    return None


def fused_output(gm: fx.GraphModule, node: fx.Node) -> ActQuant | None:
    """The quantizer the runtime folds into `node`'s kernel: its only reader, possibly after one
    ReLU / ReLU6 that the quantizer's range makes redundant (the runtime then drops it)."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user, upper = users[0], None
    if is_relu(gm, user):
        upper = clip_upper(gm, user)
        if upper is None or len(user.users) != 1:
            return None
        user = next(iter(user.users))
    quantizer = _module(gm, user)
    if not isinstance(quantizer, ActQuant) or not quantizer.frozen:
        return None
    if upper is not None and not clips_within(quantizer, 0.0, upper):
        return None
    return quantizer


def clips_within(quantizer: ActQuant, lower: float, upper: float) -> bool:
    """Whether the quantizer's own range lies inside [lower, upper] (float32, as ONNX Runtime's
    Relu/Clip-into-QuantizeLinear fusion tests it), so a clip before it changes nothing."""
    scale, zero, qmin, qmax = quantizer.qparams()
    eps = float(torch.finfo(torch.float32).eps)
    s = torch.tensor(scale, dtype=torch.float32)
    low, high = float(s * float(qmin - zero)), float(s * float(qmax - zero))
    return low >= lower - eps and high <= upper + eps


def attach_fused_kernels(gm: fx.GraphModule) -> int:
    """Let each quantized layer and residual add whose quantizers the runtime fuses into one
    integer kernel (QLinearConv, QGemm, QLinearAdd) compute exactly what that kernel computes.
    Returns how many were attached."""
    from edgeopt.quantization.modules import FusedKernel, QuantizedAdd, QuantizedWeightLayer

    attached = 0
    for node in list(gm.graph.nodes):
        module = _module(gm, node)
        if isinstance(module, QuantizedWeightLayer) and module.input_quantizer is None:
            source, output = grid_source(gm, node.args[0]), fused_output(gm, node)
            if source is not None and output is not None:
                module.fused = FusedKernel(source, output)
                attached += 1
        elif node.op == "call_function" and node.target in _ADD_FUNCTIONS and not node.kwargs:
            attached += _attach_add(gm, node, QuantizedAdd)
    gm.graph.lint()
    gm.recompile()
    return attached


def _attach_add(gm: fx.GraphModule, node: fx.Node, kind: type[nn.Module]) -> int:
    if len(node.args) != 2:
        return 0
    a, b = (grid_source(gm, arg) for arg in node.args)
    output = fused_output(gm, node)
    if a is None or b is None or output is None:
        return 0
    name = next(f"quantized_add_{i}" for i in range(len(gm.graph.nodes) + 1)
                if not hasattr(gm, f"quantized_add_{i}"))
    gm.add_submodule(name, kind(a, b, output))
    with gm.graph.inserting_after(node):
        call = gm.graph.call_module(name, tuple(node.args))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    return 1
