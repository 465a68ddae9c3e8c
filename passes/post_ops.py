"""Post-op folds: a unary op, a binary add and the output quantize become attributes of a fused op.

Each rule copies the fused node's record with one attribute changed and re-emits it
(fused.py); the capability records (kernels/capabilities.py) decide what a fused op can take.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Optional

import torch
import torch.fx

from inductor_quant.kernels import capabilities as C
from inductor_quant.kernels import onednn as K
from inductor_quant.kernels import probe

from .fused import Fused, call, record, replace_with
from .kernel_limits import gemm_template_may_run
from .match import ACT_RANGE, args_of, users_inside, val, within

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


def check_noop(match: Match) -> Optional[str]:
    if record(match.kwargs["y"]) is None:
        return "input is not a fused oneDNN op"
    if match.output_node().kwargs.get("memory_format") not in NOOP_FORMATS:
        return "copy changes the memory format"
    return None


def drop_noop(match: Match) -> None:
    # clone(fused(...)) -> fused(...)   the graph is functional here; every in-place post-op
    # (`sum`) takes its own copy of its extra input (fold_binary, fold_output_quant)
    copy = match.output_node()
    copy.replace_all_uses_with(match.kwargs["y"])
    copy.graph.erase_node(copy)


# --- post-op folds -------------------------------------------------------------------------


def unary_attr(post: C.PostOp, bound: dict) -> K.Unary:
    """The oneDNN attribute for a matched post-op: its arguments from the bound constants."""
    return K.Unary(post.attr, tuple(float(bound[a]) for a in post.arguments), post.algorithm)


def _check_fold_target(match: Match, f: Optional[Fused]) -> Optional[str]:
    if f is None:
        return "input is not a fused oneDNN op"
    if not users_inside(match, match.kwargs["y"]):
        return "fused result has other users"
    if f.out.quantized:
        return "output already requantized"
    return None


@functools.cache
def check_unary(name: str, after_binary: bool):
    post = C.BY_NAME[name]

    def check(match: Match) -> Optional[str]:
        f = record(match.kwargs["y"])
        reason = _check_fold_target(match, f)
        if reason:
            return reason
        layer = C.layer_name(f.kind, len(f.geom.stride) if f.geom else 0)
        if after_binary and not post.after_add or not post.fuses_with(layer):
            return f"oneDNN {layer}" + (" after a binary op" if after_binary else "") + f" does not take post-op {name}"
        if (f.binary is not None) != after_binary:
            return "post-op slot taken"
        if (f.binary.unary.name if after_binary else f.unary.name) != "none":
            return "post-op slot taken"
        for k, v in post.constants:
            if k not in post.arguments and match.kwargs.get(k) != v:
                return f"{name}: constant {k}={match.kwargs.get(k)} is not {v}"
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


def check_binary(match: Match) -> Optional[str]:
    f, other = record(match.kwargs["y"]), match.kwargs["other"]
    reason = _check_fold_target(match, f)
    if reason:
        return reason
    if f.binary is not None or f.unary.name != "none":
        return "post-op slot taken"
    if not isinstance(other, torch.fx.Node) or val(other) is None:
        return "extra input is not a tensor"
    if record(other) is not None and other in match.nodes:
        return "extra input is inside the match"
    vy, vo, vout = val(match.kwargs["y"]), val(other), val(match.output_node())
    if list(vo.shape) != list(vy.shape):
        return "extra input differs in shape (broadcast add)"
    # bf16 result + fp32 extra (a dq residual under autocast) promotes to fp32: the fused op
    # then emits fp32 (its bf16 rounding of y is skipped: within bf16 tolerance, dtype kept)
    if vo.dtype != vy.dtype and not (vy.dtype == torch.bfloat16 and vo.dtype == vout.dtype == torch.float32):
        return "extra input differs in dtype"
    layer = C.layer_name(f.kind, len(f.geom.stride) if f.geom else 0)
    if layer not in C.BINARY_LAYERS:
        return f"oneDNN {layer} does not take a binary post-op"
    name = _linear_binary(other, match) if f.kind == "qlinear" else "sum"
    if f.kind == "qlinear" and not f.out.quantized and not probe.qlinear_binary_builds(vout.dtype, name):
        return f"oneDNN on this CPU has no int8 matmul with {vout.dtype} output and `{name}` (needs AVX-512)"
    return None


def _linear_binary(other: torch.fx.Node, match: Match) -> str:
    return "sum" if writable_in_place(other, match) and not gemm_template_may_run() else "add"


def fold_binary(match: Match) -> None:
    # add(fused(...), other) -> fused(..., binary=sum|add, other)   `sum` accumulates into other in place:
    # conv into its copy of other; linear into other itself when that is safe, else `add` (new output)
    f, other, out = record(match.kwargs["y"]), match.kwargs["other"], match.output_node()
    if f.kind == "qconv":
        other = call(out.graph, out, aten.clone.default, other, memory_format=torch.channels_last)
        binary = K.Binary("sum")
    else:
        binary = K.Binary(_linear_binary(other, match))
    result = K.Output(val(out).dtype) if not f.out.quantized else f.out
    replace_with(out, dataclasses.replace(f, binary=binary, other=other, out=result))
    _erase_matched(match)


def writable_in_place(other: torch.fx.Node, match: Match) -> bool:
    """May a linear `sum` overwrite `other`? Inductor's lowering writes into it although the op's
    schema does not declare the write, so every schedule must run all of other's readers first:
    other is a fresh tensor computed here (not an input, constant or view) and each of its other
    readers feeds the fused op's inputs (a data dependency no reordering can break)."""
    schema = getattr(other.target, "_schema", None)
    v = val(other)
    if other.op != "call_function" or schema is None or any(r.alias_info for r in schema.returns):
        return False
    if v is None or not v.is_contiguous():
        return False
    y = match.kwargs["y"]
    return all(u in match.nodes or _feeds(u, y) for u in other.users)


def _feeds(node: torch.fx.Node, y: torch.fx.Node) -> bool:
    """node computes (part of) an input of y: searched forward, in graph order up to y. y itself
    reading other is not enough (it would read and write other in one call)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for u in n.users:
            if u is y and node is not y:
                return True
            if u not in seen and u < y:
                seen.add(u)
                todo.append(u)
    return False


def check_output_quant(match: Match) -> Optional[str]:
    f = record(match.kwargs["y"])
    reason = _check_fold_target(match, f)
    if reason:
        return reason
    q = match.output_node()
    a = args_of(q)
    if q.target is not qd.quantize_per_tensor.default or not isinstance(a["scale"], (int, float)):
        return "output quantize is not per-tensor with scalar qparams"
    if a["dtype"] not in ACT_RANGE or not within(a, ACT_RANGE[a["dtype"]]):
        return "output quant range is not within u8/s8"
    if val(match.kwargs["y"]).dtype not in (torch.float32, torch.bfloat16):
        return "fused result is not fp32/bf16"
    if val(f.x) is None or not C.lowering_accepts_output(val(f.x).dtype, a["dtype"]):
        return f"output dtype {a['dtype']} differs from the activation's (Inductor lowering limit)"
    if f.binary is not None:
        extra = _quantized_extra(f)
        if extra is None or extra[1] != a["dtype"]:
            return "binary post-op with requantized output: extra input is not dq(int8) of the output dtype"
        if f.kind == "qlinear" and gemm_template_may_run():
            # the requantized form adds an int8 extra input in place; Inductor's C++ GEMM template
            # takes only a float one (its lowering asserts), so the quantize stays a kernel of its own
            return "requantized linear + add under Inductor's C++ GEMM template (it takes only a float extra input)"
    return None


def _quantized_extra(f: Fused):
    """(int8 tensor, its dtype, its QParams) when the binary extra input is dq(int8), else None."""
    o = f.other
    if o.target is aten.clone.default:
        o = o.args[0]
    if o.target is not qd.dequantize_per_tensor.default:
        return None
    a = args_of(o)
    return o.args[0], a["dtype"], K.QParams(float(a["scale"]), int(a["zero_point"]))


CLAMPS = (aten.clamp_min.default, aten.clamp_max.default)


def fold_output_quant(match: Match) -> None:
    # q(fused(...)) -> fused(..., out=(dtype, scale, zp))
    q = match.output_node()
    a = args_of(q)
    out = K.Output(a["dtype"], float(a["scale"]), int(a["zero_point"]))
    f = dataclasses.replace(record(match.kwargs["y"]), out=out)
    if f.binary is not None:
        # q(post(y + dq(r))) -> fused(..., sum with r int8 at its own qparams)   `sum` writes into its copy
        r, _, rq = _quantized_extra(f)
        fmt = torch.channels_last if f.kind == "qconv" else torch.contiguous_format
        f = dataclasses.replace(f, other=call(q.graph, q, aten.clone.default, r, memory_format=fmt),
                                binary=dataclasses.replace(f.binary, name="sum", other=rq))
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
