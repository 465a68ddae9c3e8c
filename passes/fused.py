"""The fused ops our passes create: their record, read from the node as it is, and how one is
(re-)emitted.

A fused node's record (`kernels.onednn.FusedOp`: input, qparams, weight, post-ops, output) is
never stored: `record(node)` reads it from the node's current arguments every time. A rewrite
that replaces an input of a fused op (the producer's output-quantize fold, a sibling merge)
therefore changes what every later rule sees, and no rule can act on a stale copy. Fold rules
never edit argument lists: they take the record, change one attribute (`dataclasses.replace`)
and call `replace_with`, which emits through the builders in `inductor_quant.kernels`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.fx
from torch.utils._pytree import tree_map

from inductor_quant.kernels import compat
from inductor_quant.kernels import onednn as K

from .match import args_of

Fused = K.FusedOp


def record(node: Any) -> Optional[Fused]:
    """The fused op `node` calls, as a record of its current arguments (None: not a fused op)."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target not in K.FUSED_OPS:
        return None
    return K.read(node.target, args_of(node))


def propagate_fake(node: torch.fx.Node) -> None:
    """Set node.meta['val'] by running the op on its inputs' fake values (later passes read it).
    A 1-D conv runs as its 2-D form (torch's meta gets the 1-D output length wrong)."""
    vals = [a.meta.get("val") for a in node.all_input_nodes]
    fake_mode = compat.fake_mode_of(vals)
    if fake_mode is None or any(v is None for v in vals):
        return
    to_val = lambda a: a.meta["val"] if isinstance(a, torch.fx.Node) else a  # noqa: E731
    f = record(node)
    with fake_mode:
        if f is not None and f.kind == "qconv" and len(f.geom.stride) == 1:
            on_vals = dataclasses.replace(
                f, w=to_val(f.w), w_scale=to_val(f.w_scale), w_zp=to_val(f.w_zp), bias=to_val(f.bias),
                other=to_val(f.other), xq=K.QParams(to_val(f.xq.scale), to_val(f.xq.zero_point)))
            node.meta["val"] = K.emit(K.eager, K.lift_1d(on_vals, to_val(f.x).unsqueeze(2))).squeeze(2)
        else:
            node.meta["val"] = node.target(*tree_map(to_val, node.args), **tree_map(to_val, node.kwargs))


def emit_before(anchor: torch.fx.Node, f: Fused) -> torch.fx.Node:
    with anchor.graph.inserting_before(anchor):
        node = K.emit(anchor.graph.call_function, f)
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
