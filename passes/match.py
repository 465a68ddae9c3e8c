"""Reading a matched graph: arguments by schema name, fake values, static shapes, qparam ranges.

Every rule reads nodes through these helpers, never by argument position.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import free_symbols, statically_known_true

qd = torch.ops.quantized_decomposed

ACT_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}
ACT_DQ = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor)
ACT_Q = qd.quantize_per_tensor.default  # a static activation's quantize (scalar qparams)
# every dequantize form a layer's input can come from: static activation (.default), dynamic
# activation (.tensor: choose_qparams -> q/dq), per-token dynamic activation, per-channel weight
DEQUANTS = (*ACT_DQ, qd.dequantize_per_token.default, qd.dequantize_per_channel.default)


def args_of(node: torch.fx.Node) -> dict:
    """The node's arguments by schema name (defaults filled in)."""
    out = {}
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def node_of(match, *targets) -> Optional[torch.fx.Node]:
    return next((n for n in match.nodes if n.target in targets), None)


def val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def same_dims(a, b) -> bool:
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def static_shape(node) -> Optional[list]:
    v = val(node)
    return None if v is None or free_symbols(v.shape) else list(v.shape)


def has_symbolic(shape) -> bool:
    return bool(free_symbols(tuple(shape)))


def within(a: dict, bounds: tuple) -> bool:
    """quant_min / quant_max of a q/dq node within `bounds`."""
    return bounds[0] <= a["quant_min"] <= a["quant_max"] <= bounds[1]


def users_inside(match, node: torch.fx.Node) -> bool:
    inside = set(match.nodes)
    return all(u in inside for u in node.users)


def float_dtype(match) -> Optional[torch.dtype]:
    """The dtype a match computes in: its fused input `y` (post-op rules), else its output."""
    y = match.kwargs.get("y")
    v = val(y if isinstance(y, torch.fx.Node) else match.output_node())
    return None if v is None else v.dtype


def constant_value(node) -> Optional[torch.Tensor]:
    """The tensor a weight-like graph input holds in a freezing compile, which freezing makes a
    constant: a `get_attr`, or a placeholder among the compile's parameters (the first inputs of
    the graph, as freezing itself maps them). None for anything computed at run time or when the
    value found does not match the node's fake value."""
    if not isinstance(node, torch.fx.Node):
        return None
    tensor = None
    if node.op == "get_attr" and node.graph.owning_module is not None:
        tensor = node.graph.owning_module
        for part in str(node.target).split("."):
            tensor = getattr(tensor, part, None)
    elif node.op == "placeholder":
        context = torch._guards.TracingContext.try_get()
        params = getattr(context, "params_flat", None) or []
        index = list(node.graph.find_nodes(op="placeholder")).index(node)
        tensor = params[index] if index < len(params) else None
    fake = val(node)
    if not isinstance(tensor, torch.Tensor) or fake is None or (tensor.dtype, tensor.shape) != (fake.dtype, fake.shape):
        return None
    return tensor


def all_zero(node) -> bool:
    """Whether `node` is a constant (constant_value) whose elements are all 0."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    tensor = constant_value(node)
    with unset_fake_temporarily():  # the passes run under Inductor's fake mode; this tensor is real
        return tensor is not None and not bool(tensor.any())


def constant_fits_fp16(node) -> bool:
    """Whether `node` is a constant (constant_value) of fp32 values each of which fp16 holds
    exactly (a cast to fp16 then loses nothing)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    tensor = constant_value(node)
    with unset_fake_temporarily():
        return tensor is not None and tensor.dtype == torch.float32 and torch.equal(tensor.half().float(), tensor)


def constant_within(node, lo: int, hi: int) -> bool:
    """Whether `node` is a constant (constant_value) whose elements all lie in [lo, hi]."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    tensor = constant_value(node)
    with unset_fake_temporarily():
        return tensor is not None and bool(((tensor >= lo) & (tensor <= hi)).all())
