"""Every fusion, declared once, and the order the phases run in. The single place for priority.

Phases (Inductor's freezing stage, before torch's own freezing patterns; see install.py):
  promote   a dequantize with several users is duplicated so each chain can fuse
  propagate q(maxpool|view|permute|cat(dq(x))) with one set of qparams runs on int8 directly
  prepack   dq(x) -> conv / linear(dq(w)) -> onednn.qconv_pointwise / qlinear_pointwise, fp32 out
  noop      drop a copy of a fused result (eval-mode dropout) so the post-ops after it can fold
  unary     fold one unary post-op into the fused op's attributes
  binary    fold add (both operand orders) as a binary post-op
  binary_unary   fold relu after the binary post-op
  output    fold the output quantize (requantized uint8/int8 out)
Within a phase, table order is priority (larger patterns first).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import torch
import torch.fx
from torch._inductor.pattern_matcher import GraphPatternEntry, Match, PatternMatcherPass

from . import patterns as P
from . import post_ops as O
from . import prepack as R
from . import stats as S
from .fused import call

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

PHASES = ("promote", "propagate", "prepack", "noop", "unary", "binary", "binary_unary", "output")


@dataclasses.dataclass(frozen=True)
class Fusion:
    id: str  # dotted: pattern name, stats key, test id
    phase: str
    search: Callable
    example: tuple  # (maker, *args) -> example inputs for tracing
    check: Callable[[Match], Optional[str]]
    rewrite: Callable[[Match], None]
    scalars: tuple = ()  # constants bound by name while tracing

    def pattern(self):
        return P.traced(self.search, self.example, self.scalars)


DTYPES = (("", False), (".bf16", True))  # int8-fp32, int8-mixed-bf16 (autocast)


def _prepack_fusions():
    for weight, per_channel in (("", True), (".wpt", False)):
        for dt, bf16 in DTYPES:
            for bias in ((True,) if not bf16 else (True, False)):  # fp32: b=None matches too
                nb = "" if bias or not bf16 else ".nobias"
                yield Fusion(f"qconv.prepack{weight}{dt}{nb}", "prepack", P.dq_conv(per_channel, bias, bf16),
                             (P.conv_example, per_channel, bias), R.check_dq_conv, R.prepack_qconv)
            for bias in (True, False):  # linear: addmm vs mm
                nb = "" if bias else ".nobias"
                # N-D first: it contains the 2-D form; .m1: one row, decomposed to mul + sum
                for rank, rows, dims in ((3, 4, ".nd"), (2, 4, ".2d"), (2, 1, ".m1")):
                    yield Fusion(f"qlinear.prepack{dims}{weight}{dt}{nb}", "prepack",
                                 P.dq_linear(per_channel, bias, bf16),
                                 (P.linear_example, rank, per_channel, bias, rows), R.check_dq_linear,
                                 R.prepack_qlinear)
                    if per_channel:  # dynamic quantization: runtime activation qparams
                        yield Fusion(f"qlinear.dynamic{dims}{dt}{nb}", "prepack",
                                     P.dq_linear(True, bias, bf16, True),
                                     (P.linear_example, rank, True, bias, rows, True), R.check_dq_linear,
                                     R.prepack_qlinear)


def _post_op_fusions():
    yield Fusion("post.noop.clone", "noop", P.clone, (P.float_example, 1), O.check_noop, O.drop_noop)
    for dt, bf16 in DTYPES:  # bf16 decompositions upcast some post-ops: traced per dtype
        ex = (P.float_example, 1, torch.bfloat16 if bf16 else torch.float32)
        ex2 = (P.float_example, 2, torch.bfloat16 if bf16 else torch.float32)
        for name, (fn, scalars) in P.UNARY.items():
            yield Fusion(f"post.{name}{dt}", "unary", fn, ex, O.check_unary(name, False), O.fold_unary(name),
                         tuple(scalars.items()))
        yield Fusion(f"post.binary.add{dt}", "binary", P.add, ex2, O.check_binary, O.fold_binary)
        yield Fusion(f"post.binary.add.swapped{dt}", "binary", P.add_swapped, ex2, O.check_binary, O.fold_binary)
        yield Fusion(f"post.binary.relu{dt}", "binary_unary", P.UNARY["relu"][0], ex,
                     O.check_unary("relu", True), O.fold_unary("relu"))
        yield Fusion(f"post.output.quant{dt}", "output", P.quantize, ex, O.check_output_quant, O.fold_output_quant)


def _propagation_fusions():
    for name, fn, example in (
        ("maxpool2d", P.dq_maxpool_q, (P.u8_example, 1)), ("reshape", P.dq_reshape_q, (P.u8_example, 1, True)),
        ("view", P.dq_view_q, (P.u8_example, 1)), ("permute", P.dq_permute_q, (P.u8_example, 1)),
        ("cat3", P.dq_cat3_q, (P.u8_example, 3)), ("cat2", P.dq_cat2_q, (P.u8_example, 2)),
    ):
        yield Fusion(f"int8.{name}", "propagate", fn, example, R.check_same_qparams, R.propagate_int8)


@functools.cache
def fusions() -> tuple:
    """The table. A dtype variant whose traced pattern equals an earlier one in the same phase
    (no casts in its decomposition) is dropped: the earlier id covers both dtypes."""
    seen, table = set(), []
    for f in (*_propagation_fusions(), *_prepack_fusions(), *_post_op_fusions()):
        key = (f.phase, str(f.pattern()))
        if key not in seen:
            seen.add(key)
            table.append(f)
    return tuple(table)


def fusion_ids() -> list:
    return [f.id for f in fusions()] + ["dequant.promote", "qconv.s8_to_u8"]


def _entry(fusion: Fusion) -> GraphPatternEntry:
    def handler(match: Match, *args, **kwargs):
        fusion.rewrite(match)
        S.count(fusion.id)

    def check(match: Match) -> bool:
        reason = fusion.check(match)
        meta = match.output_node().meta
        # kept on the anchor so the unfused report can say why; a later phase's reason (a post-op
        # that found no fused op there) never hides the prepack's
        if reason and (fusion.phase == "prepack" or "inductor_quant_reason" not in meta):
            meta["inductor_quant_reason"] = f"{fusion.id}: {reason}"
        return reason is None

    return GraphPatternEntry(pattern=fusion.pattern(), extra_check=check, handler=handler)


@functools.cache
def phase_passes() -> dict:
    """phase -> PatternMatcherPass holding that phase's fusions in table order (ours only, not global)."""
    passes = {}
    for phase in PHASES[1:]:
        passes[phase] = PatternMatcherPass(pass_name=f"inductor_quant.{phase}")
        for fusion in fusions():
            if fusion.phase == phase:
                _entry(fusion).register(passes[phase])
    return passes


# every dequantize form a shared chain can end in, and so what `promote` duplicates: static
# activation (.default), dynamic activation (.tensor: choose_qparams -> q/dq feeding q, k, v),
# per-channel weight (tied layers)
DEQUANTS = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor, qd.dequantize_per_channel.default)
CONSUMER_KIND = {
    aten.convolution.default: "conv", aten.addmm.default: "linear", aten.mm.default: "linear",
    aten.bmm.default: "bmm", aten.mul.Tensor: "linear",
}
PASS_THROUGH = (aten.permute.default, aten.view.default, aten.clone.default, aten.expand.default,
                torch.ops.prims.convert_element_type.default)


def promote_dequant(graph: torch.fx.Graph) -> None:
    # dq(x) -> {a, b}  =>  dq(x) -> a, dq'(x) -> b
    for node in list(graph.nodes):
        if node.target in DEQUANTS and len(node.users) > 1:
            for user in list(node.users)[1:]:
                with graph.inserting_before(user):
                    copy = graph.node_copy(node)
                user.replace_input_with(node, copy)
                S.count("dequant.promote")


def _is_weight_dq(node: torch.fx.Node) -> bool:
    src = node.args[0] if node.args else None
    return (node.target in DEQUANTS and isinstance(src, torch.fx.Node) and src.op in ("placeholder", "get_attr")
            and R.args_of(node)["dtype"] == torch.int8)


def _consumer(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    while len(node.users) == 1 and next(iter(node.users)).target in PASS_THROUGH:
        node = next(iter(node.users))
    return next(iter(node.users), None)


def quantized_compute(graph: torch.fx.Graph) -> list:
    """Consumers of int8-weight dequantizes still in the graph: quantized layers not fused."""
    return [c for c in (_consumer(n) for n in graph.nodes if _is_weight_dq(n)) if c is not None]


POOLS = {
    torch.ops.prims._low_memory_max_pool_with_offsets.default: "int8 max pooling needs equal input/output qparams",
    aten.max_pool2d_with_indices.default: "int8 max pooling needs equal input/output qparams",
    aten.avg_pool2d.default: "average pooling is not exact on int8 (rounding): left in fp32",
    aten._adaptive_avg_pool2d.default: "average pooling is not exact on int8 (rounding): left in fp32",
    aten.mean.dim: "average pooling is not exact on int8 (rounding): left in fp32",
}


def quantized_pools(graph: torch.fx.Graph) -> list:
    """Pooling ops between a dequantize and a quantize: they run in fp32."""
    return [n for n in graph.nodes if n.target in POOLS and isinstance(n.args[0], torch.fx.Node)
            and n.args[0].target in DEQUANTS]


def report_unfused(graph: torch.fx.Graph, reason: Optional[str] = None) -> None:
    for node in quantized_compute(graph):
        S.unfused(CONSUMER_KIND.get(node.target, str(node.target)), node.name, reason or _why(node))
    for node in quantized_pools(graph):
        S.unfused("pool", node.name, reason or POOLS[node.target])


def _why(node: torch.fx.Node) -> str:
    """Name the check a leftover quantized layer failed (or the first prepack check it fails)."""
    near = [node]  # the failed match kept its reason on its output node: a few ops downstream
    for _ in range(3):  # (one-row linear: mul -> sum -> add bias)
        near += [u for n in near for u in n.users if u not in near]
    for n in near:
        if "inductor_quant_reason" in n.meta:
            return n.meta["inductor_quant_reason"]
    if node.target not in (aten.convolution.default, aten.addmm.default, aten.mm.default):
        return f"no pattern matched this form (weight consumed by {node.target})"
    x = node.args[1] if node.target is aten.addmm.default else node.args[0]
    while isinstance(x, torch.fx.Node) and x.target is aten.view.default:
        x = x.args[0]
    if not isinstance(x, torch.fx.Node) or x.target not in DEQUANTS:
        return "activation is not dequantized (float activation, int8 weight)"
    kind = "qconv" if node.target is aten.convolution.default else "qlinear"
    return R.check_act_dq(x, kind) or "no pattern matched this form (see passes/patterns.py)"


def decompose_weight_dequants(graph: torch.fx.Graph) -> None:
    """A layer left unfused keeps `dequantize(w_int8)` in the graph, and constant folding never
    folds a dequantize (it keeps int8 weights int8 for the prepack): the fp32 fallback would
    dequantize its weight on every call. For layers refused only because int8 would saturate on
    this CPU (a whole 8-bit model on a CPU without VNNI), the same arithmetic as plain ATen ops
    folds into a frozen fp32 constant instead, so the fallback costs what an fp32 layer costs.
    Other refusals keep the runtime dequantize: some are geometries oneDNN's prepacked fp32
    conv would crash on too (an output window entirely in the padding)."""
    refused = {n for n in quantized_compute(graph) if R.SATURATION_TAG in _why(n)}
    for node in list(graph.nodes):
        if (not _is_weight_dq(node) or node.target is qd.dequantize_per_tensor.tensor
                or _consumer(node) not in refused):
            continue
        a = R.args_of(node)
        out_dtype = a.get("out_dtype") or torch.float32
        if node.target is qd.dequantize_per_channel.default:
            # (w - zp) * scale, broadcast along `axis`: what quantized_decomposed computes
            shape = [1] * R.val(a["input"]).dim()
            shape[a["axis"]] = -1
            w = a["input"]
            if a["zero_points"] is not None:
                w = call(graph, node, aten.sub.Tensor, w, call(graph, node, aten.view.default, a["zero_points"], shape))
            w = call(graph, node, aten.mul.Tensor, w, call(graph, node, aten.view.default, a["scales"], shape))
            if out_dtype != torch.float32:
                w = call(graph, node, torch.ops.prims.convert_element_type.default, w, out_dtype)
        else:  # per tensor: (float(w) - zp) * scale
            w = call(graph, node, torch.ops.prims.convert_element_type.default, a["input"], out_dtype)
            w = call(graph, node, aten.mul.Tensor, call(graph, node, aten.sub.Tensor, w, a["zero_point"]), a["scale"])
        node.replace_all_uses_with(w)
        graph.erase_node(node)


def run(graph: torch.fx.Graph) -> None:
    """All phases, in order, on one graph."""
    promote_dequant(graph)
    for phase in PHASES[1:]:
        phase_passes()[phase].apply(graph)
    graph.eliminate_dead_code()
    report_unfused(graph)
    decompose_weight_dequants(graph)
