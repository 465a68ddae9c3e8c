"""Why a quantized layer stayed unfused: find the leftovers after the phases and name the reason.

A rule that refuses a match keeps its reason on the match's output node
(`node.meta[REASON]`, set by registry); `report_unfused` finds each quantized conv/linear/pool
still in the graph and reports that reason, or the first prepack check it fails.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.fx

from . import stats as S
from .match import DEQUANTS, args_of
from .prepack import check_act_dq

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

REASON = "inductor_quant_reason"
CONSUMER_KIND = {
    aten.convolution.default: "conv", aten.addmm.default: "linear", aten.mm.default: "linear",
    aten.bmm.default: "bmm", aten.mul.Tensor: "linear",
}
PASS_THROUGH = (aten.permute.default, aten.view.default, aten.clone.default, aten.expand.default,
                torch.ops.prims.convert_element_type.default)
MAX_POOL = "int8 max pooling needs equal input/output qparams"
AVG_POOL = "average pooling is not exact on int8 (rounding): left in fp32"


@functools.cache
def pools() -> dict:
    """Pooling op -> why it runs in fp32 between a dequantize and a quantize. (Inductor registers
    its low-memory max pool when it loads, so the table is built on first use, inside a compile.)"""
    table = {aten.max_pool2d_with_indices.default: MAX_POOL, aten.avg_pool2d.default: AVG_POOL,
             aten._adaptive_avg_pool2d.default: AVG_POOL, aten.mean.dim: AVG_POOL}
    low_memory = getattr(torch.ops.prims, "_low_memory_max_pool_with_offsets", None)
    if low_memory is not None:
        table[low_memory.default] = MAX_POOL
    return table


def is_weight_dq(node: torch.fx.Node) -> bool:
    src = node.args[0] if node.args else None
    return (node.target in DEQUANTS and isinstance(src, torch.fx.Node) and src.op in ("placeholder", "get_attr")
            and args_of(node)["dtype"] == torch.int8)


def consumer(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The op a weight dequantize feeds, past views and casts."""
    while len(node.users) == 1 and next(iter(node.users)).target in PASS_THROUGH:
        node = next(iter(node.users))
    return next(iter(node.users), None)


def quantized_compute(graph: torch.fx.Graph) -> list:
    """Consumers of int8-weight dequantizes still in the graph: quantized layers not fused."""
    return [c for c in (consumer(n) for n in graph.nodes if is_weight_dq(n)) if c is not None]


def quantized_pools(graph: torch.fx.Graph) -> list:
    """Pooling ops between a dequantize and a quantize: they run in fp32."""
    return [n for n in graph.nodes if n.target in pools() and isinstance(n.args[0], torch.fx.Node)
            and n.args[0].target in DEQUANTS]


def report_unfused(graph: torch.fx.Graph, reason: Optional[str] = None) -> None:
    for node in quantized_compute(graph):
        S.unfused(CONSUMER_KIND.get(node.target, str(node.target)), node.name, reason or why(node))
    for node in quantized_pools(graph):
        S.unfused("pool", node.name, reason or pools()[node.target])


def keep_reason(node: torch.fx.Node, fusion_id: str, phase: str, reason: str) -> None:
    """Remember why a rule refused the match ending at `node`; a later phase's reason (a post-op
    that found no fused op there) never hides the prepack's."""
    if phase == "prepack" or REASON not in node.meta:
        node.meta[REASON] = f"{fusion_id}: {reason}"


def why(node: torch.fx.Node) -> str:
    """Name the check a leftover quantized layer failed (or the first prepack check it fails)."""
    near = [node]  # the failed match kept its reason on its output node: a few ops downstream
    for _ in range(3):  # (one-row linear: mul -> sum -> add bias)
        near += [u for n in near for u in n.users if u not in near]
    for n in near:
        if REASON in n.meta:
            return n.meta[REASON]
    if node.target not in (aten.convolution.default, aten.addmm.default, aten.mm.default):
        return f"no pattern matched this form (weight consumed by {node.target})"
    x = node.args[1] if node.target is aten.addmm.default else node.args[0]
    while isinstance(x, torch.fx.Node) and x.target is aten.view.default:
        x = x.args[0]
    if not isinstance(x, torch.fx.Node) or x.target not in DEQUANTS:
        return "activation is not dequantized (float activation, int8 weight)"
    kind = "qconv" if node.target is aten.convolution.default else "qlinear"
    return check_act_dq(x, kind) or "no pattern matched this form (see passes/patterns.py)"
