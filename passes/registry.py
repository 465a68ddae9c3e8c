"""Every fusion, declared once with its public id, and the order the phases run in. The single
place for priority.

Phases (Inductor's freezing stage, before torch's own freezing patterns; see install.py):
  promote   a dequantize with several users is duplicated so each chain can fuse
  propagate q(maxpool|view|permute|cat(dq(x))) with one set of qparams runs on int8 directly
  prepack   dq(x) -> conv / linear(dq(w)) -> onednn.qconv_pointwise / qlinear_pointwise, fp32 out;
            linear(x, fp16-rounded w) -> onednn.linear_dynamic_fp16 (relu folded here)
  noop      drop a copy of a fused result (eval-mode dropout) so the post-ops after it can fold
  unary     fold one unary post-op into the fused op's attributes
  binary    fold add (both operand orders) as a binary post-op
  cast      fold a cast of an fp32 fused result to bf16 (an in-place add under autocast)
  binary_unary   fold a unary after the binary post-op
  output    fold the output quantize (requantized uint8/int8 out)
Within a phase, table order is priority (larger patterns first).

Ids are public (`stats()` keys, test ids) and fixed by the table: a row's `dtype` says which
compute dtype its id counts. Where torch's decompositions make the fp32 and bf16 search
patterns trace to the same graph, one matcher entry serves both rows and the match's dtype
picks the id, so the keys never depend on how a torch release decomposes an op.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import torch
import torch.fx

from inductor_quant.kernels import capabilities as C
from inductor_quant.kernels import compat

from . import accumulators as A
from . import diagnostics as D
from . import pattern_cache
from . import patterns as P
from . import post_ops as O
from . import prepack as R
from . import propagate as G
from . import stats as S
from . import upstream_counters as U
from .fused import record
from .reasons import Why
from .graph_rewrites import (decompose_per_token_quant, decompose_weight_dequants, drop_noop_views, lift_conv1d, merge_sibling_linears,
                             merge_sibling_woq_linears, promote_dequant, views_after_convs_as_reshape)
from .match import float_dtype, node_of, val

aten = torch.ops.aten
PHASES = ("promote", "propagate", "prepack", "noop", "unary", "binary", "cast", "binary_unary", "output")
F32, BF16 = torch.float32, torch.bfloat16


@dataclasses.dataclass(frozen=True)
class Fusion:
    id: str  # dotted: pattern name, stats key, test id
    phase: str
    search: Callable  # traced on `example`; with example None, it builds the pattern itself
    example: Optional[tuple]  # (maker, *args) -> example inputs for tracing
    check: Callable  # Match -> None, or the Reason it may not fire (reasons.py)
    rewrite: Callable  # Match -> ids of sub-steps performed (or None)
    scalars: tuple = ()  # constants bound by name while tracing
    dtype: Optional[torch.dtype] = None  # the compute dtype this id counts (None: any)

    def pattern(self):
        if self.example is None:  # a variadic form (ListOf) a trace cannot express
            return self.search()
        return P.traced(self.search, self.example, self.scalars)


@dataclasses.dataclass(frozen=True)
class Step:
    """A counted rewrite that is not a pattern of its own: a whole-graph walk, or a part of a
    pattern's rewrite that happens only for some inputs."""

    id: str
    phase: str
    doc: str


STEPS = (
    Step("dequant.promote", "promote", "a shared dequantize duplicated for one of its users"),
    Step(R.S8_TO_U8, "prepack", "an int8 conv activation shifted to uint8 (qconv takes uint8 only)"),
    Step(R.S8_TO_U8_LINEAR, "prepack", "an int8 linear activation shifted to uint8 (oneDNN ran s8 ones in its "
                                       "reference matmul on VNNI CPUs without AMX)"),
    Step("merge.sibling_linears", "output", "fused linears on one input (Q, K, V) merged into one GEMM"),
    Step("merge.sibling_linears.absorbed", "output", "a linear merged into a sibling's GEMM (one oneDNN call fewer)"),
    Step("merge.sibling_woq_linears", "output", "weight-only int8 linears on one input (Q, K, V; gate, up) merged "
                                                "into one call"),
    Step("merge.sibling_woq_linears.absorbed", "output", "a weight-only linear merged into a sibling's call"),
    Step("post.binary.resettled", "output", "an in-place `sum` a later rewrite made unsafe: now `add`, or the op "
                                            "taken apart (accumulators.settle)"),
    Step("layout.view_as_reshape", "output", "a view downstream of a fused conv (channels-last where the float conv "
                                             "was contiguous) read as reshape "
                                             "(graph_rewrites.views_after_convs_as_reshape)"),
)
DTYPES = (("", F32), (".bf16", BF16))  # int8-fp32, int8-mixed-bf16 (autocast)
# how a linear traces: (input rank, rows, id suffix, input layout: patterns.laid_out); the
# one-row form (bias only: without one it is the 2-D form) last
LINEAR_FORMS = ((3, 4, ".nd", "contiguous"), (3, 4, ".bmm", "transposed"), (4, 4, ".bmm_nd", "transposed"),
                (4, 4, ".bmm_nd_copy", "permuted"), (2, 4, ".2d", "contiguous"), (2, 1, ".m1", "contiguous"))


def linear_forms(bias: bool) -> tuple:
    return LINEAR_FORMS if bias else LINEAR_FORMS[:-1]


def _prepack_fusions():
    for weight, per_channel in (("", True), (".wpt", False)):
        for dt, dtype in DTYPES:
            bf16 = dtype is BF16
            for bias in ((True,) if not bf16 else (True, False)):  # fp32: b=None matches too
                nb = "" if bias or not bf16 else ".nobias"
                yield Fusion(f"qconv.prepack{weight}{dt}{nb}", "prepack", P.dq_conv(per_channel, bias, bf16),
                             (P.conv_example, per_channel, bias), R.check_dq_conv, R.prepack_qconv, dtype=dtype)
            for bias in (True, False):  # linear: addmm vs mm
                nb = "" if bias else ".nobias"
                # N-D first: it contains the 2-D form; .bmm: a non-contiguous 3-D input (expand +
                # bmm + bias add); .bmm_nd(_copy): the same past 3-D (the input viewed as 3-D,
                # after a contiguous copy where its leading dims do not merge; the result viewed
                # back); .m1: one row, where Inductor decomposes addmm to mul + sum (a
                # one-row mm stays mm: .2d covers it)
                for rank, rows, dims, layout in linear_forms(bias):
                    yield Fusion(f"qlinear.prepack{dims}{weight}{dt}{nb}", "prepack",
                                 P.dq_linear(per_channel, bias, bf16),
                                 (P.linear_example, rank, per_channel, bias, rows, False, layout),
                                 R.check_dq_linear, R.prepack_qlinear, dtype=dtype)
                    if per_channel:  # dynamic quantization: runtime activation qparams
                        yield Fusion(f"qlinear.dynamic{dims}{dt}{nb}", "prepack",
                                     P.dq_linear(True, bias, bf16, True),
                                     (P.linear_example, rank, True, bias, rows, True, layout), R.check_dq_linear,
                                     R.prepack_qlinear, dtype=dtype)


def _fp16_weight_fusions():
    # fp32 activations x fp16 weights (not quantized: no Q/DQ on the input); relu is the one
    # post-op the op family takes, folded in the same rewrite (its form first: it contains the other)
    for relu in (".relu", ""):
        for bias in (True, False):
            nb = "" if bias else ".nobias"
            for rank, rows, dims, layout in linear_forms(bias):
                yield Fusion(f"linear.fp16_weight{relu}{dims}{nb}", "prepack", P.fp16_weight_linear(bias, bool(relu)),
                             (P.fp16_linear_example, rank, bias, rows, layout), R.check_fp16_weight_linear,
                             R.prepack_fp16_weight_linear)


def _float_linear_fusions(name: str, search, example, check, rewrite, no_one_row: bool = False):
    """One linear rule in every traced form, fp32 and bf16 (autocast), with and without a bias:
    `search(bias, bf16)` and `example(rank, bias, bf16, rows, layout)` give each variant."""
    for dt, dtype in DTYPES:
        for bias in (True, False):
            nb = "" if bias else ".nobias"
            for rank, rows, dims, layout in linear_forms(bias):
                if not (no_one_row and dims == ".m1"):
                    yield Fusion(f"{name}{dims}{dt}{nb}", "prepack", search(bias, dtype is BF16),
                                 (example, rank, bias, dtype is BF16, rows, layout), check, rewrite, dtype=dtype)


def _woq_int8_fusions():
    # float activations x int8 weights, no activation quantization (weight-only int8)
    return _float_linear_fusions("linear.woq_int8", P.woq_int8_linear, P.woq_linear_example,
                                 R.check_woq_int8_linear, R.lower_woq_int8_linear)


def _per_token_fusions():
    # int8 activations with run-time row scales x int8 weights per channel (dynamic per-token)
    return _float_linear_fusions("qlinear.per_token", P.per_token_linear, P.per_token_linear_example,
                                 R.check_per_token_linear, R.prepack_per_token_linear)


def _woq_grouped_fusions():
    # float activations x group-wise 4-bit weights (weight-only int4), then x group-wise 8-bit ones
    # (the same traced pattern: the first whose check passes takes a match). No one-row form:
    # Inductor decomposes a one-row addmm only up to 16 inputs, and a group is at least 32
    yield from _float_linear_fusions("linear.woq_int4", P.woq_grouped_linear, P.woq_grouped_linear_example,
                                     R.check_woq_int4_linear, R.lower_woq_int4_linear, no_one_row=True)
    yield from _float_linear_fusions("linear.woq_grouped_int8", P.woq_grouped_linear, P.woq_grouped_linear_example,
                                     R.check_woq_grouped_int8_linear, R.lower_woq_grouped_int8_linear,
                                     no_one_row=True)


def _post_op_fusions():
    yield Fusion("post.noop.clone", "noop", P.clone, (P.float_example, 1), O.check_noop, O.drop_noop)
    for dt, dtype in DTYPES:  # bf16 decompositions upcast some post-ops: traced per dtype
        ex, ex2 = (P.float_example, 1, dtype), (P.float_example, 2, dtype)
        for post in C.foldable():
            yield Fusion(f"post.{post.name}{dt}", "unary", post.search, ex, O.check_unary(post.name, False),
                         O.fold_unary(post.name), post.constants, dtype)
        yield Fusion(f"post.binary.add{dt}", "binary", P.add, ex2, O.check_binary, O.fold_binary, dtype=dtype)
        yield Fusion(f"post.binary.add.swapped{dt}", "binary", P.add_swapped, ex2, O.check_binary, O.fold_binary,
                     dtype=dtype)
        if dtype is F32:  # only an fp32 result is cast to bf16
            yield Fusion("post.cast.bf16", "cast", P.to_bf16, ex, O.check_cast, O.fold_cast)
        for post in C.foldable():
            if post.after_add:
                yield Fusion(f"post.binary.{post.name}{dt}", "binary_unary", post.search, ex,
                             O.check_unary(post.name, True), O.fold_unary(post.name), post.constants, dtype)
        yield Fusion(f"post.output.quant{dt}", "output", P.quantize, ex, O.check_output_quant, O.fold_output_quant,
                     dtype=dtype)


def _propagation_fusions():
    for name, fn, example in (
        ("maxpool2d", P.dq_maxpool_q, (P.u8_example, 1)), ("reshape", P.dq_reshape_q, (P.u8_example, 1, True)),
        ("view", P.dq_view_q, (P.u8_example, 1)), ("permute", P.dq_permute_q, (P.u8_example, 1)),
        ("cat", functools.partial(P.dq_cat_q, True), None), ("cat.dim0", functools.partial(P.dq_cat_q, False), None),
    ):
        yield Fusion(f"int8.{name}", "propagate", fn, example, G.check_same_qparams, G.propagate_int8)


@functools.cache
def fusions() -> tuple:
    """The table, in priority order."""
    return (*_propagation_fusions(), *_prepack_fusions(), *_fp16_weight_fusions(), *_per_token_fusions(), *_woq_grouped_fusions(), *_woq_int8_fusions(),
            *_post_op_fusions())


def fusion_ids() -> list:
    """Every public id `stats()["fused"]` can hold."""
    return [f.id for f in fusions()] + [s.id for s in STEPS]


def _count(fusion_id: str) -> None:
    if fusion_id not in _declared():
        raise KeyError(f"fusion id {fusion_id!r} is not declared in passes/registry.py")
    S.count(fusion_id)


@functools.cache
def _declared() -> frozenset:
    return frozenset(fusion_ids())


def _entry(rows: list, pattern):
    """One matcher entry (on their `pattern`) for the rows whose patterns trace alike: the match's dtype narrows them,
    and the first of those (table order) whose check passes takes the match; its check runs again
    when it rewrites, on the graph as it is then. Rows that differ in more than dtype trace alike
    only where declared so (weight-only int4 and group-wise int8: the weight's range tells them
    apart); every declared id fires in tests/passes/test_phases.py."""

    def candidates(match) -> list:
        dtype = float_dtype(match)
        return [r for r in rows if r.dtype in (None, dtype)] or rows[:1]

    def decide(match) -> tuple:
        """(the row that takes the match or None, [(row, reason) of the rows that refused])"""
        refused = []
        for fusion in candidates(match):
            reason = fusion.check(match)
            if reason is None:
                return fusion, refused
            refused.append((fusion, reason))
        return None, refused

    def handler(match, *args, **kwargs):
        fusion, _ = decide(match)
        if fusion is None:
            raise RuntimeError("inductor-quant: a fusion's check passed and then failed on the same match")
        before = record(match.kwargs.get("y"))  # the fused op a post-op rule folds into
        conv = node_of(match, aten.convolution.default)
        conv_rank = len(val(conv).shape) - 2 if conv is not None and val(conv) is not None else 0
        for step in fusion.rewrite(match) or ():
            _count(step)
        _count(fusion.id)
        U.count_fusion(fusion.id, match, before, conv_rank)

    def check(match) -> bool:
        fusion, refused = decide(match)
        for row, reason in refused if fusion is None else ():
            if reason.why is not Why.OTHER_RULE:
                D.keep_reason(match.output_node(), row.id, row.phase, reason)
        return fusion is not None

    pm = compat.pattern_matcher()
    return pm.GraphPatternEntry(pattern=pattern, extra_check=check, handler=handler)


@functools.cache
def phase_passes() -> dict:
    """phase -> PatternMatcherPass holding that phase's fusions in table order (ours only, not global)."""
    pm = compat.pattern_matcher()
    patterns = pattern_cache.patterns_of({f.id: f.pattern for f in fusions()})  # 2.5 s traced, 0.1 s from the file
    passes = {}
    for phase in PHASES[1:]:
        passes[phase] = pm.PatternMatcherPass(pass_name=f"inductor_quant.{phase}")
        alike: dict = {}  # traced pattern -> rows (insertion order keeps the table's priority)
        for fusion in fusions():
            if fusion.phase == phase:
                alike.setdefault(str(patterns[fusion.id]), []).append(fusion)
        for rows in alike.values():
            _entry(rows, patterns[rows[0].id]).register(passes[phase])
    return passes


def run(graph: torch.fx.Graph) -> list:
    """All phases, in order, on one graph; then report what stayed in fp32 (returned: stats.Unfused)."""
    drop_noop_views(graph)
    promoted = promote_dequant(graph)
    for _, copies, _ in promoted:
        for _ in range(copies):
            _count("dequant.promote")
    U.count_promotions(promoted)
    for phase in PHASES[1:]:
        phase_passes()[phase].apply(graph)
    for step, merge in (("merge.sibling_linears", merge_sibling_linears),
                        ("merge.sibling_woq_linears", merge_sibling_woq_linears)):
        for size in merge(graph):
            _count(step)
            for _ in range(size - 1):
                _count(f"{step}.absorbed")
    graph.eliminate_dead_code()
    for _ in range(A.settle(graph)):
        _count("post.binary.resettled")
    graph.eliminate_dead_code()
    lift_conv1d(graph)
    U.count_lowered(graph)
    unfused = D.report_unfused(graph)
    decompose_weight_dequants(graph)
    decompose_per_token_quant(graph)
    for _ in range(views_after_convs_as_reshape(graph)):
        _count("layout.view_as_reshape")
    return unfused
