"""Post-op folds: a unary op, a binary add, a cast to bf16 and the output quantize become
attributes of a fused op.

Each rule copies the fused node's record with one attribute changed and re-emits it
(fused.py); the capability records (kernels/capabilities.py) decide what a fused op can take,
and accumulators.py how a binary post-op adds its extra input.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Optional

import torch
import torch.fx

from inductor_quant.kernels import capabilities as C
from inductor_quant.kernels import onednn as K

from . import accumulators as A
from .fused import Fused, call, record, replace_with
from .kernel_limits import gemm_template_may_run
from .match import ACT_RANGE, args_of, users_inside, val, within
from .reasons import Reason, Why

if TYPE_CHECKING:
    from torch._inductor.pattern_matcher import Match

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def _erase_matched(match: Match) -> None:
    """Erase the matched post-op nodes and the fused op they consumed (now unused)."""
    match.erase_nodes()
    y = match.kwargs["y"]
    if not y.users:
        y.graph.erase_node(y)


# --- no-op copies --------------------------------------------------------------------------

NOOP_FORMATS = (None, torch.preserve_format)


def check_noop(match: Match) -> Optional[Reason]:
    if record(match.kwargs["y"]) is None:
        return Why.NOT_FUSED_INPUT()
    if match.output_node().kwargs.get("memory_format") not in NOOP_FORMATS:
        return Why.NOOP_FORMAT()
    return None


def drop_noop(match: Match) -> None:
    # clone(fused(...)) -> fused(...)   the graph is functional here; a `sum` post-op writes only
    # into an extra input nothing reads afterwards (accumulators.py)
    copy = match.output_node()
    copy.replace_all_uses_with(match.kwargs["y"])
    copy.graph.erase_node(copy)


# --- post-op folds -------------------------------------------------------------------------


def unary_attr(post: C.PostOp, bound: dict) -> K.Unary:
    """The oneDNN attribute for a matched post-op: its arguments from the bound constants."""
    return K.Unary(post.attr, tuple(float(bound[a]) for a in post.arguments), post.algorithm)


def _check_fold_target(match: Match, f: Optional[Fused]) -> Optional[Reason]:
    if f is None:
        return Why.NOT_FUSED_INPUT()
    if not users_inside(match, match.kwargs["y"]):
        return Why.OTHER_USERS()
    if f.out.quantized:
        return Why.ALREADY_REQUANTIZED()
    return None


@functools.cache
def check_unary(name: str, after_binary: bool):
    post = C.BY_NAME[name]

    def check(match: Match) -> Optional[Reason]:
        f = record(match.kwargs["y"])
        reason = _check_fold_target(match, f)
        if reason:
            return reason
        layer = C.layer_name(f.kind, len(f.geom.stride) if f.geom else 0)
        if after_binary and not post.after_add or not post.fuses_with(layer):
            return Why.POST_OP_UNSUPPORTED(layer=layer, where=" after a binary op" if after_binary else "", name=name)
        if (f.binary is not None) != after_binary:
            return Why.SLOT_TAKEN()
        if (f.binary.unary.name if after_binary else f.unary.name) != "none":
            return Why.SLOT_TAKEN()
        for k, v in post.constants:
            if k not in post.arguments and match.kwargs.get(k) != v:
                return Why.CONSTANT(name=name, key=k, value=match.kwargs.get(k), want=v)
        return None

    return check


@functools.cache
def fold_unary(name: str):
    post = C.BY_NAME[name]

    def rewrite(match: Match) -> None:
        # post(fused(...)) -> fused(..., attr=post)
        f = record(match.kwargs["y"])
        u = unary_attr(post, match.kwargs)
        if f.binary is None:
            f = dataclasses.replace(f, unary=u)
        else:
            f = dataclasses.replace(f, binary=dataclasses.replace(f.binary, unary=u))
        replace_with(match.output_node(), f)
        _erase_matched(match)

    return rewrite


def check_binary(match: Match) -> Optional[Reason]:
    f, other = record(match.kwargs["y"]), match.kwargs["other"]
    reason = _check_fold_target(match, f)
    if reason:
        return reason
    if f.binary is not None or f.unary.name != "none":
        return Why.SLOT_TAKEN()
    if not isinstance(other, torch.fx.Node) or val(other) is None:
        return Why.EXTRA_NOT_TENSOR()
    if other is match.kwargs["y"] or (record(other) is not None and other in match.nodes):
        return Why.EXTRA_INSIDE()  # y + y: folding would run the GEMM twice
    vy, vo, vout = val(match.kwargs["y"]), val(other), val(match.output_node())
    if list(vo.shape) != list(vy.shape):
        return Why.EXTRA_SHAPE()
    # bf16 result + fp32 extra (a dq residual under autocast) promotes to fp32: the fused op
    # then emits fp32 (its bf16 rounding of y is skipped: within bf16 tolerance, dtype kept)
    if vo.dtype != vy.dtype and not (vy.dtype == torch.bfloat16 and vo.dtype == vout.dtype == torch.float32):
        return Why.EXTRA_DTYPE()
    layer = C.layer_name(f.kind, len(f.geom.stride) if f.geom else 0)
    if layer not in C.BINARY_LAYERS:
        return Why.NO_BINARY(layer=layer)
    if _accumulation(match) is None:
        if f.kind == "qconv":
            return Why.ACCUMULATOR_BUSY()
        return Why.ADD_UNBUILDABLE(out=vout.dtype, other=vo.dtype)
    return None


def _accumulation(match: Match) -> Optional[str]:
    """`sum` into the extra input, or `add` (linear), as the graph stands now (accumulators.py)."""
    y, other, out = match.kwargs["y"], match.kwargs["other"], match.output_node()
    if record(y).kind == "qconv":  # oneDNN's conv takes `sum` only
        return "sum" if A.writable_in_place(other, y, tuple(match.nodes)) else None
    return A.linear_accumulation(other, val(out).dtype, y, tuple(match.nodes))


def fold_binary(match: Match) -> None:
    # add(fused(...), other) -> fused(..., binary=sum|add, other)   `sum` accumulates into other in
    # place, chosen only where nothing reads other afterwards (accumulators.py; re-checked by
    # accumulators.settle once every rewrite has run)
    f, other, out = record(match.kwargs["y"]), match.kwargs["other"], match.output_node()
    binary = K.Binary(_accumulation(match))
    replace_with(out, dataclasses.replace(f, binary=binary, other=other, out=K.Output(val(out).dtype)))
    _erase_matched(match)


def check_output_quant(match: Match) -> Optional[Reason]:
    f = record(match.kwargs["y"])
    reason = _check_fold_target(match, f)
    if reason:
        return reason
    q = match.output_node()
    a = args_of(q)
    if q.target is not qd.quantize_per_tensor.default or not isinstance(a["scale"], (int, float)):
        return Why.OUTPUT_QUANT_FORM()
    if a["dtype"] not in ACT_RANGE or not within(a, ACT_RANGE[a["dtype"]]):
        return Why.OUTPUT_RANGE()
    if val(match.kwargs["y"]).dtype not in (torch.float32, torch.bfloat16):
        return Why.RESULT_DTYPE()
    if val(f.x) is None or not C.lowering_accepts_output(val(f.x).dtype, a["dtype"]):
        return Why.OUTPUT_DTYPE(dtype=a["dtype"])
    if f.binary is not None and A.requantized_accumulation(f, _output(q), match.kwargs["y"]) is None:
        if f.kind == "qlinear" and gemm_template_may_run():
            # Inductor's C++ GEMM template computes `sum` wrong and its lowering takes only a float
            # extra input with `add`; where that does not build, the quantize stays a kernel of its own
            return Why.REQUANT_EXTRA(detail="under Inductor's C++ GEMM template only `add` of a float extra input")
        return Why.REQUANT_EXTRA(detail="the extra input is not dq(int8) of the output dtype that may be overwritten"
                                 + (", and oneDNN builds no `add` for it" if f.kind == "qlinear" else ""))
    return None


# --- a cast to bf16 ------------------------------------------------------------------------
# Under autocast, `a.add_(b)` of a bf16 linear output and an fp32 one adds in fp32 and casts
# back to a's dtype: the binary fold leaves fused(fp32 out) -> to(bf16), which would keep the
# unary and the quantize after it from folding. The fused op rounds to bf16 as the cast does.


def check_cast(match: Match) -> Optional[Reason]:
    f = record(match.kwargs["y"])
    reason = _check_fold_target(match, f)
    if reason:
        return reason
    if match.output_node().args[1] != torch.bfloat16 or f.out.dtype != torch.float32:
        return Why.CAST_FORM()
    if val(f.x) is None or not C.lowering_accepts_output(val(f.x).dtype, torch.bfloat16):
        return Why.OUTPUT_DTYPE(dtype=torch.bfloat16)
    if _sum_into_fp32(f) and (f.kind != "qlinear" or not A.add_builds(torch.bfloat16, f.other)):
        return Why.ADD_UNBUILDABLE(out=torch.bfloat16, other=val(f.other).dtype)
    return None


def _sum_into_fp32(f: Fused) -> bool:
    """A `sum` accumulates into an extra input of the output's dtype: with a bf16 output, an fp32
    extra input is added (`add`, linear) instead."""
    return f.binary is not None and f.binary.name == "sum" and val(f.other).dtype != torch.bfloat16


def fold_cast(match: Match) -> None:
    # to(bf16)(fused(..., fp32 out)) -> fused(..., bf16 out)
    f = record(match.kwargs["y"])
    if _sum_into_fp32(f):
        f = dataclasses.replace(f, binary=A.as_add(f.binary))
    replace_with(match.output_node(), dataclasses.replace(f, out=K.Output(torch.bfloat16)))
    _erase_matched(match)


def _output(q: torch.fx.Node) -> K.Output:
    a = args_of(q)
    return K.Output(a["dtype"], float(a["scale"]), int(a["zero_point"]))


CLAMPS = (aten.clamp_min.default, aten.clamp_max.default)


def fold_output_quant(match: Match) -> None:
    # q(fused(...)) -> fused(..., out=(dtype, scale, zp))
    q = match.output_node()
    a = args_of(q)
    out = _output(q)
    f = dataclasses.replace(record(match.kwargs["y"]), out=out)
    if f.binary is not None:
        # q(post(y + dq(r))) -> fused(..., sum into r at its own qparams), or (linear) add of the float extra
        how = A.requantized_accumulation(f, out, match.kwargs["y"])
        f = dataclasses.replace(f, other=how.other, binary=how.binary)
    fused = replace_with(q, f)
    lo, hi = a["quant_min"], a["quant_max"]
    if (lo, hi) != ACT_RANGE[a["dtype"]]:
        # a narrower range (a reduce_range=True model: [0, 127]): the op saturates to the dtype's
        # range, quantize clamps to [lo, hi]; the clamp is exact and keeps the next layer's
        # input within the range its kernel takes exactly (kernels/cpu.py)
        clamped = fused
        for op, bound, limit in ((aten.clamp_min.default, lo, 0), (aten.clamp_max.default, hi, 1)):
            if bound != ACT_RANGE[a["dtype"]][limit]:  # the forms Inductor lowers (clamp is decomposed)
                clamped = call(q.graph, q, op, clamped, bound)
        fused.replace_all_uses_with(clamped, delete_user_cb=lambda user: user.target not in CLAMPS)
    _erase_matched(match)
