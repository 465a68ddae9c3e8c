"""Attention through our kernel layer: in a compile our passes fused int8 layers in, each call of
torch's CPU flash attention (`aten._scaled_dot_product_flash_attention_for_cpu`, what Inductor's
attention fusion makes of matmul -> softmax -> matmul) becomes `iq_onednn.attention`
(kernels/native.py): two batched oneDNN matmuls and a oneDNN softmax, built once per shape.

Why: on the transformer rows the int8 GEMMs run at par with OpenVINO's, and the gap was attention
(docs/PERFORMANCE.md, section 4): torch's flash attention walks 128 x 64 heads in blocks of 32
queries, 2.5x slower there than the three primitives. Same result up to float rounding (the
whole softmax at once instead of an online one): tests/kernels/test_native.py.

When: Inductor fuses attention in its joint-graph patterns, after our phases, so this runs from
the slot after them (`joint_custom_post_pass`, install.py), on the same freezing inference graph,
under the same conditions as the rest of our kernel calls (available, not an AOTInductor build).
Left to torch: dropout, causal masks, a boolean mask, a logsumexp someone reads, other dtypes,
bf16 where this CPU emulates it (kernels/cpu.py).
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch

from inductor_quant.kernels import probe
from inductor_quant.kernels.cpu import cpu_info

from .fused import propagate_fake
from .match import ACT_Q, val
from .reasons import Reason, Why
from .stats import count, count_kernel

aten = torch.ops.aten
FLASH = aten._scaled_dot_product_flash_attention_for_cpu.default
FLOATS = (torch.float32, torch.bfloat16)
# what a model does between attention and the next linear: heads back beside each other
RESHAPES = (aten.permute.default, aten.clone.default, aten.view.default, aten._unsafe_view.default, aten.reshape.default)


def why_not(node: torch.fx.Node) -> Optional[Reason]:
    """Why this flash-attention call stays torch's (None: ours computes it)."""
    q, k, v = node.args[:3]
    dropout = node.args[3] if len(node.args) > 3 else node.kwargs.get("dropout_p", 0.0)
    causal = node.args[4] if len(node.args) > 4 else node.kwargs.get("is_causal", False)
    if dropout != 0.0 or causal:
        return Why.ATTN_DROPOUT_OR_CAUSAL()
    if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
        return Why.ATTN_LOGSUMEXP()
    vals = [val(t) if isinstance(t, torch.fx.Node) else None for t in (q, k, v)]
    if any(t is None or t.dim() != 4 or t.dtype not in FLOATS or t.dtype != vals[0].dtype for t in vals):
        return Why.ATTN_OPERANDS()
    if vals[0].dtype == torch.bfloat16 and not cpu_info().bf16_native:
        return Why.ATTN_BF16_EMULATED()
    if not probe.attention_builds(vals[0].dtype):
        return Why.ATTN_UNBUILDABLE()
    mask = node.kwargs.get("attn_mask")
    if mask is not None and (not isinstance(mask, torch.fx.Node) or val(mask) is None or val(mask).dtype not in FLOATS
                             or val(mask).dim() > 4):
        return Why.ATTN_MASK()
    if node.kwargs.get("scale") is None and not isinstance(vals[0].shape[-1], int):
        return Why.ATTN_SYMBOLIC_SCALE()
    return None


def route(graph: torch.fx.Graph) -> int:
    """Each flash-attention call ours can compute, replaced by `iq_onednn.attention`; how many."""
    routed = 0
    for node in list(graph.find_nodes(op="call_function", target=FLASH)):
        if why_not(node) is not None:
            continue
        q, k, v = node.args[:3]
        scale = node.kwargs.get("scale")
        scale = 1.0 / math.sqrt(val(q).shape[-1]) if scale is None else float(scale)
        with graph.inserting_before(node):
            new = graph.call_function(torch.ops.iq_onednn.attention.default,
                                      (q, k, v, node.kwargs.get("attn_mask"), scale))
        propagate_fake(new)
        for user in list(node.users):
            user.replace_all_uses_with(new)
            graph.erase_node(user)
        graph.erase_node(node)
        count_kernel("attention")
        routed += 1
        if _quantize_after_reshapes(new):
            count("attention.quantize_after_reshapes")
    return routed


def _quantize_after_reshapes(attn: torch.fx.Node) -> bool:
    """attention -> quantize -> permute -> clone -> view becomes attention -> permute -> view ->
    quantize (exact: the quantize is per element and the others only move elements).

    Why: torch's pre-grad `quant_lift_up` puts the quantize of the output projection's input right
    after attention, on its [B, H, S, D] view; Inductor then writes the uint8 result in that order
    and copies it into [B, S, H * D] for the linear: two loops, the first over 64-channel pieces
    (BERT-base bs8 on an AMD Zen 4: 160 us a layer). Our attention's memory is already [B, S, H, D],
    so after the permute the clone copies nothing and is dropped (only when the permuted value is
    contiguous), and the quantize reads and writes one flat tensor."""
    users = list(attn.users)
    if len(users) != 1 or users[0].target is not ACT_Q:
        return False
    quant = users[0]
    if any(isinstance(a, torch.fx.Node) for a in quant.args[1:]):  # tensor qparams: leave it
        return False
    chain, node = [], quant
    while len(node.users) == 1 and next(iter(node.users)).target in RESHAPES:
        node = next(iter(node.users))
        chain.append(node)
    if not chain:
        return False
    graph, last = attn.graph, attn
    chain[0].replace_input_with(quant, attn)
    for step in chain:
        if (step.target is aten.clone.default and val(last) is not None and val(last).is_contiguous()
                and step.kwargs.get("memory_format") in (None, torch.contiguous_format, torch.preserve_format)):
            step.replace_all_uses_with(last)
            graph.erase_node(step)
        else:
            propagate_fake(step)
            last = step
    with graph.inserting_after(last):
        moved = graph.call_function(ACT_Q, (last, *quant.args[1:]), dict(quant.kwargs))
    last.replace_all_uses_with(moved, delete_user_cb=lambda u: u is not moved)
    propagate_fake(moved)
    graph.erase_node(quant)
    return True
