"""The ATen vocabulary the annotators match, and the graph walks they share.

Work is recognised by the ATen ops in the exported graph (`torch.export.export(...).module()`,
non-strict), never by `nn.Module` type or `source_fn_stack`: `F.conv2d` calls, `nn.Conv2d`
subclasses with their own `forward` and "same padding" convs behind `F.pad` all show up as
`aten.conv2d`, and a `self.relu` called three times is three separate `aten.relu` nodes.

Unary post-ops and what oneDNN fuses come from the capability records the passes use too
(kernels/capabilities.py); they only decide how a pattern is *reported* -- the annotation
recipe is the same either way: one q/dq pair around the whole chain, the output observer
after the last post-op.
"""

from __future__ import annotations

import operator

from typing import Optional

import torch
from torch.fx import Node

from ..kernels import capabilities

aten = torch.ops.aten


def _overloads(*names: str) -> frozenset:
    """`"relu.default"` -> aten.relu.default, skipping overloads this torch build lacks."""
    out = []
    for name in names:
        packet, overload = name.split(".")
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            out.append(op)
    return frozenset(out)


# Anchors: the ops carrying a weight. Spatial rank decides the dotted pattern name.
CONV_OPS: dict = {
    **dict.fromkeys(_overloads("conv1d.default", "conv1d.padding"), "conv1d"),
    **dict.fromkeys(_overloads("conv2d.default", "conv2d.padding"), "conv2d"),
    **dict.fromkeys(_overloads("conv3d.default", "conv3d.padding"), "conv3d"),
}
CONV_TRANSPOSE_OPS = _overloads(
    "conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input"
)
CONVOLUTION_OP = aten.convolution.default  # decomposed graphs: transposed flag at args[6]
LINEAR_OPS = _overloads("linear.default")
MATMUL_OPS = _overloads("matmul.default", "bmm.default")
BATCH_NORM_OPS = _overloads("batch_norm.default")
DROPOUT_OPS = _overloads("dropout.default")  # (x, p, train): identity when train is False

# Unary post-ops: aten op -> post-op name (in-place variants included), from the records.
UNARY_OPS: dict = {op: post.name for post in capabilities.POST_OPS for op in _overloads(*post.aten_ops)}
RELU_OPS = _overloads("relu.default", "relu_.default")
ADD_OPS = _overloads("add.Tensor", "add_.Tensor")
MUL_OPS = _overloads("mul.Tensor", "mul_.Tensor")

# int8-in / int8-out ops: the output may share the input's qparams exactly.
POOL_OPS = _overloads("max_pool2d.default", "avg_pool2d.default", "adaptive_avg_pool2d.default")
SHAPE_OPS = _overloads(
    "flatten.using_ints", "reshape.default", "view.default", "_unsafe_view.default", "permute.default"
)
CAT_OPS = _overloads("cat.default", "concat.default")



def onednn_fuses(layer: str, post_op: str) -> bool:
    """Does the int8 op for `layer` ("conv2d", "linear", ...) take this post-op ("add" or a unary)?"""
    if post_op == "add":
        return layer in capabilities.BINARY_LAYERS
    return capabilities.BY_NAME[post_op].fuses_with(layer)


# Python callables a user may name in set_function_type_qconfig / set_object_type.
_F = torch.nn.functional
FUNCTION_TO_ATEN: dict = {
    _F.linear: LINEAR_OPS,
    _F.conv1d: frozenset(k for k, v in CONV_OPS.items() if v == "conv1d"),
    _F.conv2d: frozenset(k for k, v in CONV_OPS.items() if v == "conv2d"),
    _F.conv3d: frozenset(k for k, v in CONV_OPS.items() if v == "conv3d"),
    torch.matmul: _overloads("matmul.default"),
    torch.Tensor.matmul: _overloads("matmul.default"),
    operator.matmul: _overloads("matmul.default"),  # a @ b
    torch.bmm: _overloads("bmm.default"),
    torch.Tensor.bmm: _overloads("bmm.default"),
    torch.add: ADD_OPS,
    torch.mul: MUL_OPS,
    torch.cat: CAT_OPS,
}


def conv_kind(node: Node) -> Optional[str]:
    """"conv1d"/"conv2d"/"conv3d" for a (non-transposed) convolution node, else None."""
    if node.op != "call_function":
        return None
    if node.target in CONV_OPS:
        return CONV_OPS[node.target]
    if node.target == CONVOLUTION_OP and len(node.args) > 6 and not node.args[6]:
        weight = node.args[1]
        rank = _rank(weight) if isinstance(weight, Node) else None
        return f"conv{rank - 2}d" if rank in (3, 4, 5) else None
    return None


def is_conv_transpose(node: Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target in CONV_TRANSPOSE_OPS:
        return True
    return node.target == CONVOLUTION_OP and len(node.args) > 6 and bool(node.args[6])


def is_op(node: object, ops) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in ops


def _rank(node: Node) -> Optional[int]:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def is_float_tensor(node: object) -> bool:
    """True when the node's value is a floating-point tensor (or unknown: no meta)."""
    if not isinstance(node, Node):
        return False
    val = node.meta.get("val")
    if val is None:
        return True
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def same_shape(a: Node, b: Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
        return False
    return tuple(va.shape) == tuple(vb.shape)


def is_constant(node: object) -> bool:
    """True when `node` is computed from parameters/buffers only (no graph input upstream),
    so convert/freezing can fold its quantization into an int8 constant."""
    if not isinstance(node, Node):
        return False
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        todo.extend(n.all_input_nodes)
    return True


def only_user(node: Node) -> Optional[Node]:
    """The single consumer of `node`, or None if it has zero or several."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None
