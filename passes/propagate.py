"""int8 propagation: q(op(dq(x))) with one set of qparams runs op on the int8 tensor directly.

Exact: max pooling, views, permutes and cat commute with a shared affine dequantize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .fused import propagate_fake
from .match import ACT_DQ, ACT_RANGE, args_of
from .reasons import Reason, Why

if TYPE_CHECKING:
    from torch._inductor.pattern_matcher import Match

qd = torch.ops.quantized_decomposed

_QPARAM_KEYS = ("scale", "zero_point", "quant_min", "quant_max", "dtype")


def check_same_qparams(match: Match) -> Optional[Reason]:
    q = match.output_node()
    dqs = [n for n in match.nodes if n.target in ACT_DQ]
    if q.target is not qd.quantize_per_tensor.default or any(d.target is not ACT_DQ[0] for d in dqs):
        return Why.PROPAGATE_FORM()
    want = tuple(args_of(q)[k] for k in _QPARAM_KEYS)
    if want[4] not in ACT_RANGE or any(tuple(args_of(d)[k] for k in _QPARAM_KEYS) != want for d in dqs):
        return Why.PROPAGATE_QPARAMS()
    return None


def propagate_int8(match: Match) -> None:
    # q(op(dq(x))) -> op(x)
    q, dqs = match.output_node(), [n for n in match.nodes if n.target in ACT_DQ]
    for d in dqs:
        d.replace_all_uses_with(d.args[0])
        d.graph.erase_node(d)
    inner = q.args[0]
    q.replace_all_uses_with(inner)
    q.graph.erase_node(q)
    for n in sorted(n for n in match.nodes if not n._erased):  # graph order: re-derive the int8 fake values
        propagate_fake(n)
