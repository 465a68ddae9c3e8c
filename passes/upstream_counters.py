"""torch 2.13's own quantization counters, kept by our passes: `counters["inductor"][...]`.

Regression suites written against torch's built-in x86 int8 passes assert these counters
(`qconv_weight_prepack_matcher_count`, `qlinear_binary_matcher_nodes`, `qcat_matcher_count`, ...).
Installing our passes takes torch's families out (builtins.py), and torch 2.14 no longer has
most of them, so each rule of ours also counts here what torch 2.13 counts for the same fusion:
`<name>_count` += 1 per fusion, `<name>_nodes` += the nodes torch's pattern would have matched.
`stats()` stays the interface of record; the table is in README ("Migrating").

What torch counts once, we may do in steps (a unary, then the output quantize): the step that
torch's match would have started counts the fusion, later steps add only their nodes.
"""

from __future__ import annotations

from typing import Optional

import torch

from inductor_quant.kernels import compat

from .fused import Fused, record
from .match import ACT_DQ, val

# our id prefix -> torch's counter (fusions torch counts at freezing or when lowering its pattern)
PREPACK = {"qconv.prepack": "qconv_weight_prepack_matcher", "qlinear.prepack": "qlinear_weight_prepack_matcher",
           "qlinear.dynamic": "qlinear_weight_prepack_matcher",
           "linear.fp16_weight": "qlinear_weight_prepack_matcher"}
PROPAGATION = {"int8.maxpool2d": "qmaxpool2d_matcher", "int8.view": "qreshape_matcher", "int8.cat": "qcat_matcher"}
PROMOTION = "dequant_promotion_matcher"


def _bump(name: str, nodes: int, count: int = 1) -> None:
    table = compat.inductor_counters()
    if table is not None:
        table[f"{name}_count"] += count
        table[f"{name}_nodes"] += nodes


def _post_op_counter(f: Fused, binary: bool) -> str:
    if binary:
        return "qconv2d_binary_matcher" if f.kind == "qconv" else "qlinear_binary_matcher"
    return "qconv_unary_matcher" if f.kind == "qconv" else "qlinear_unary_matcher"


def count_fusion(fusion_id: str, match, before: Optional[Fused], conv_rank: int = 0) -> None:
    """After our rule `fusion_id` rewrote `match`; `before` is the fused op it folded into
    (post-op rules), `conv_rank` the spatial rank of a prepacked conv."""
    nodes = len(match.nodes)
    for prefix, name in PREPACK.items():
        if fusion_id.startswith(prefix):
            return _bump(name, nodes + _prepack_nodes_torch_sees(fusion_id, match, conv_rank))
    if fusion_id in PROPAGATION:
        return _bump(PROPAGATION[fusion_id], nodes)
    if before is None or not fusion_id.startswith("post.") or fusion_id.startswith("post.noop"):
        return
    if fusion_id.startswith("post.cast"):  # the cast back to bf16 after an add: part of torch's binary match
        return _bump(_post_op_counter(before, before.binary is not None), nodes, count=0)
    if fusion_id.startswith("post.binary.add"):  # the fused op and the add (+ casts)
        return _bump(_post_op_counter(before, True), nodes + 1)
    if fusion_id.startswith("post.binary."):  # a unary after the add: part of torch's binary match
        return _bump(_post_op_counter(before, True), nodes, count=0)
    if fusion_id.startswith("post.output.quant"):
        if before.binary is not None:  # + the quantize (+ the residual's dequantize, in torch's conv pattern)
            absorbed = 1 if before.kind == "qconv" and _extra_is_dequant(before) else 0
            return _bump(_post_op_counter(before, True), nodes + absorbed, count=0)
        if before.unary.name != "none":
            return _bump(_post_op_counter(before, False), nodes, count=0)
        return _bump(_post_op_counter(before, False), nodes + 1)  # torch's "no unary + quantize"
    return _bump(_post_op_counter(before, False), nodes + 1)  # a unary: the fused op and its nodes


def _prepack_nodes_torch_sees(fusion_id: str, match, conv_rank: int) -> int:
    """How torch's prepack match differs from ours: it also matches the channels-last clone
    Inductor gives a 2-D conv weight that is not channels-last already (a 1x1 weight is), and
    its bias is not cast in its bf16 pattern (ours casts it)."""
    extra = 0
    w = val(match.kwargs.get("w"))
    if conv_rank == 2 and w is not None and not w.is_contiguous(memory_format=torch.channels_last):
        extra += 1
    if ".bf16" in fusion_id and match.kwargs.get("b") is not None:
        extra -= 1
    return extra


def _extra_is_dequant(f: Fused) -> bool:
    other = f.other
    return isinstance(other, torch.fx.Node) and other.target is torch.ops.quantized_decomposed.dequantize_per_tensor.default


def count_promotions(promoted: list) -> None:
    """One per shared activation dequantize (torch's dequant promotion), however many copies;
    torch does not promote a weight's dequantize. Its match also takes the bf16 cast and the
    N-D linear's view after it."""
    for target, _, steps in promoted:
        if target in ACT_DQ:
            _bump(PROMOTION, 1 + steps)


def count_lowered(graph: torch.fx.Graph) -> None:
    """What torch counts when Inductor lowers each fused op: one per op left in the graph."""
    for node in graph.nodes:
        f = record(node)
        if f is None:
            continue
        if f.binary is not None:
            _bump("qconv2d_binary_lower" if f.kind == "qconv" else "qlinear_binary_lower", 1)
        else:
            _bump("qconv_unary_lower" if f.kind == "qconv" else "qlinear_unary_lower", 1)
