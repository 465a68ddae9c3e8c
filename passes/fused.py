"""The fused-op record kept on each node our passes create, and how it is (re-)emitted.

A fused node carries a `Fused` record in `node.meta[KEY]`. Fold rules never edit argument
lists: they copy the record with one attribute changed (`dataclasses.replace`) and call
`replace_with` (which emits through the builders in `inductor_quant.kernels`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.fx
from torch.utils._pytree import tree_map

from inductor_quant.kernels import compat
from inductor_quant.kernels import onednn as K

KEY = "inductor_quant"


@dataclasses.dataclass(frozen=True)
class Fused:
    kind: str  # "qconv" | "qlinear"
    x: torch.fx.Node
    xq: K.QParams
    w: torch.fx.Node  # prepacked weight
    w_scale: torch.fx.Node
    w_zp: torch.fx.Node
    bias: Optional[torch.fx.Node]
    geom: Optional[K.ConvGeometry] = None
    out: K.Output = K.Output()
    unary: K.Unary = K.Unary()
    binary: Optional[K.Binary] = None
    other: Optional[torch.fx.Node] = None


def record(node: Any) -> Optional[Fused]:
    return node.meta.get(KEY) if isinstance(node, torch.fx.Node) else None


def _emit(graph: torch.fx.Graph, f: Fused) -> torch.fx.Node:
    call = graph.call_function
    if f.kind == "qconv" and f.binary is None:
        return K.qconv(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.bias, f.geom, f.out, f.unary)
    if f.kind == "qconv":
        return K.qconv_binary(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.other, f.bias, f.geom, f.out, f.binary)
    if f.binary is None:
        return K.qlinear(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.bias, f.out, f.unary)
    return K.qlinear_binary(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.other, f.bias, f.out, f.binary)


def propagate_fake(node: torch.fx.Node) -> None:
    """Set node.meta['val'] by running the op on its inputs' fake values (later passes read it)."""
    vals = [a.meta.get("val") for a in node.all_input_nodes]
    fake_mode = compat.fake_mode_of(vals)
    if fake_mode is None or any(v is None for v in vals):
        return
    to_val = lambda a: a.meta["val"] if isinstance(a, torch.fx.Node) else a  # noqa: E731
    with fake_mode:
        node.meta["val"] = node.target(*tree_map(to_val, node.args), **tree_map(to_val, node.kwargs))


def emit_before(anchor: torch.fx.Node, f: Fused) -> torch.fx.Node:
    with anchor.graph.inserting_before(anchor):
        node = _emit(anchor.graph, f)
    node.meta[KEY] = f
    propagate_fake(node)
    return node


def replace_with(old: torch.fx.Node, f: Fused) -> torch.fx.Node:
    """Emit `f` in place of `old` (the last node of a match); the caller erases dead nodes."""
    new = emit_before(old, f)
    old.replace_all_uses_with(new)
    return new


def call(graph: torch.fx.Graph, anchor: torch.fx.Node, op, *args, **kwargs) -> torch.fx.Node:
    """A plain helper node (dtype casts, clones) inserted before `anchor`, with its fake value."""
    with graph.inserting_before(anchor):
        node = graph.call_function(op, args, kwargs)
    propagate_fake(node)
    return node
