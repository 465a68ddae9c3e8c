"""Why a quantized op stayed in fp32: find the leftovers after the phases and name the reason.

A rule that refuses a match keeps its `Reason` on the match's output node (`node.meta[REASON]`,
set by registry). `report_unfused` finds every quantized op still computed in fp32 and reports
it with that reason, or the first prepack check it fails:
- conv / linear: an int8 weight still dequantized in the graph (`quantized_compute`), or a
  weight still rounded to fp16 (`fp16_weight_compute`);
- pools, views, permutes, cats: an op between dequantizes of its inputs and a quantize of its
  output, which an int8 propagation rule would have run on int8 (`quantized_propagations`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Optional

import torch
import torch.fx

from . import stats as S
from .match import ACT_DQ, DEQUANTS, args_of
from .prepack import check_act_dq
from .reasons import Reason, Why

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

REASON = "inductor_quant_reason"
CONSUMER_KIND = {
    aten.convolution.default: "conv", aten.addmm.default: "linear", aten.mm.default: "linear",
    aten.bmm.default: "bmm", aten.mul.Tensor: "linear",
}
PASS_THROUGH = (aten.permute.default, aten.view.default, aten.clone.default, aten.expand.default,
                torch.ops.prims.convert_element_type.default, qd.convert_element_type.no_fuse)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A rule's reason, kept on the node where its match ended."""

    fusion_id: str
    phase: str
    reason: Reason

    def as_reason(self) -> Reason:
        return Reason(self.reason.why, f"{self.fusion_id}: {self.reason.text}")


@functools.cache
def propagation_ops() -> dict:
    """The ops int8 propagation runs on int8 (op -> the kind `stats()` names), and average pools,
    which stay in fp32 by design. (Inductor registers its low-memory max pool when it loads, so
    the table is built on first use, inside a compile.)"""
    table = {aten.max_pool2d_with_indices.default: "pool", aten.avg_pool2d.default: "pool",
             aten._adaptive_avg_pool2d.default: "pool", aten.mean.dim: "pool", aten.cat.default: "cat",
             aten.view.default: "view", aten.permute.default: "permute", aten.clone.default: "view"}
    low_memory = getattr(torch.ops.prims, "_low_memory_max_pool_with_offsets", None)
    if low_memory is not None:
        table[low_memory.default] = "pool"
    return table


AVG_POOLS = (aten.avg_pool2d.default, aten._adaptive_avg_pool2d.default, aten.mean.dim)
VIEW_LIKE = (aten.view.default, aten._unsafe_view.default, aten.as_strided.default, aten.squeeze.dim,
             aten.unsqueeze.default, aten.clone.default, operator.getitem)


def is_weight_dq(node: torch.fx.Node) -> bool:
    src = node.args[0] if node.args else None
    return (node.target in DEQUANTS and isinstance(src, torch.fx.Node) and src.op in ("placeholder", "get_attr")
            and args_of(node)["dtype"] == torch.int8)


def is_fp16_weight(node: torch.fx.Node) -> bool:
    """A weight's rounding to fp16 (convert_pt2e's form of a float16 weight spec)."""
    src = node.args[0] if node.args else None
    return (node.target is qd.convert_element_type.no_fuse and node.args[1] == torch.float16
            and isinstance(src, torch.fx.Node) and src.op in ("placeholder", "get_attr"))


def consumer(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The op a weight dequantize feeds, past views and casts."""
    while len(node.users) == 1 and next(iter(node.users)).target in PASS_THROUGH:
        node = next(iter(node.users))
    return next(iter(node.users), None)


def quantized_compute(graph: torch.fx.Graph) -> list:
    """Consumers of int8-weight dequantizes still in the graph: quantized layers not fused."""
    return [c for c in (consumer(n) for n in graph.nodes if is_weight_dq(n)) if c is not None]


def fp16_weight_compute(graph: torch.fx.Graph) -> list:
    """Consumers of fp16-rounded weights still in the graph: fp16-weight layers not fused."""
    return [c for c in (consumer(n) for n in graph.nodes if is_fp16_weight(n)) if c is not None]


def quantized_propagations(graph: torch.fx.Graph) -> list:
    """Ops of the propagation table computed in fp32 between activation dequantizes and a
    quantize: each is the first op of a chain that ends in a per-tensor quantize and starts at
    dequantizes only (max pool -> getitem, clone -> view count as one op)."""
    found = []
    for q in graph.find_nodes(op="call_function", target=qd.quantize_per_tensor.default):
        op = q.args[0]
        while (isinstance(op, torch.fx.Node) and op.target in VIEW_LIKE and isinstance(op.args[0], torch.fx.Node)
               and op.args[0].op == "call_function" and op.args[0].target not in ACT_DQ and len(op.args[0].users) == 1):
            op = op.args[0]  # back to the chain's first op: max pool -> getitem, clone -> view, mean -> as_strided
        if not isinstance(op, torch.fx.Node) or op.target not in propagation_ops():
            continue
        inputs = op.args[0] if op.target is aten.cat.default else [op.args[0]]
        if inputs and all(isinstance(i, torch.fx.Node) and i.target in ACT_DQ for i in inputs):
            found.append(op)
    return found


def report_unfused(graph: torch.fx.Graph, reason: Optional[Reason] = None) -> list:
    """Record every quantized op left in fp32 in `stats()`; returns the entries (stats.Unfused)."""
    entries = [S.unfused(CONSUMER_KIND.get(node.target, str(node.target)), node.name, reason or why(node))
               for node in quantized_compute(graph)]
    entries += [S.unfused(CONSUMER_KIND.get(node.target, str(node.target)), node.name, reason or why_fp16(node))
                for node in fp16_weight_compute(graph)]
    for node in quantized_propagations(graph):
        kind = propagation_ops()[node.target]
        entries.append(S.unfused(kind, node.name, reason or why_propagation(node, kind)))
    return entries


def has_quantized_ops(graph: torch.fx.Graph) -> bool:
    return bool(quantized_compute(graph) or quantized_propagations(graph) or fp16_weight_compute(graph))


def keep_reason(node: torch.fx.Node, fusion_id: str, phase: str, reason: Reason) -> None:
    """Remember why a rule refused the match ending at `node`; a later phase's reason (a post-op
    that found no fused op there) never hides the prepack's."""
    if phase == "prepack" or REASON not in node.meta:
        node.meta[REASON] = Refusal(fusion_id, phase, reason)


def _kept(nodes, phases: tuple = ()) -> Optional[Reason]:
    """The first reason kept on `nodes` (only those of `phases`, if given)."""
    return next((n.meta[REASON].as_reason() for n in nodes
                 if REASON in n.meta and (not phases or n.meta[REASON].phase in phases)), None)


def why(node: torch.fx.Node) -> Reason:
    """Name the check a leftover quantized layer failed (or the first prepack check it fails)."""
    near = [node]  # the failed match kept its reason on its output node: a few ops downstream
    for _ in range(4):  # (one-row linear: mul -> sum -> [mul alpha] -> add bias)
        near += [u for n in near for u in n.users if u not in near]
    # a layer's own rule's reason; a post-op rule's there ("input is not a fused oneDNN op") only
    # restates that the layer did not fuse
    kept = _kept(near, ("prepack",))
    if kept is not None:
        return kept
    if node.target not in (aten.convolution.default, aten.addmm.default, aten.mm.default):
        return Why.NO_PATTERN(detail=f"weight consumed by {node.target}")
    x = node.args[1] if node.target is aten.addmm.default else node.args[0]
    while isinstance(x, torch.fx.Node) and x.target is aten.view.default:
        x = x.args[0]
    if not isinstance(x, torch.fx.Node) or x.target not in DEQUANTS:
        return Why.ACT_NOT_DEQUANTIZED()
    kind = "qconv" if node.target is aten.convolution.default else "qlinear"
    return check_act_dq(x, kind) or Why.NO_PATTERN(detail="see passes/patterns.py")


def why_fp16(node: torch.fx.Node) -> Reason:
    """A layer left on an fp16-rounded weight: the refusing rule's reason, bf16 autocast (by
    design), or no fp16-weight form (a conv, say)."""
    kept = _kept([node, *node.users])
    if kept is not None:
        return kept
    v = node.meta.get("val")
    gemm = node.target in (aten.addmm.default, aten.mm.default, aten.bmm.default)
    if gemm and v is not None and v.dtype == torch.bfloat16:
        return Why.FP16_WEIGHT_AUTOCAST()
    return Why.FP16_WEIGHT_FORM(detail=f"no fp16-weight form of {node.target} (linear only)")


def why_propagation(node: torch.fx.Node, kind: str) -> Reason:
    """An op left between dequantize and quantize: average pools by design, else the reason the
    propagation rule kept on the quantize (the match's output node), else no form matched."""
    if node.target in AVG_POOLS:
        return Why.AVG_POOL()
    chain, n = [], node
    while n is not None and len(chain) < 4:
        chain.append(n)
        n = next(iter(n.users), None) if len(n.users) == 1 else None
    return _kept(chain) or Why.NO_INT8_FORM(op=kind)
