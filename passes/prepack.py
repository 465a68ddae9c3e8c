"""Prepack rules: dq(x) -> conv / linear(dq(w)) becomes a oneDNN int8 op on a prepacked weight.

A `check_*` returns None when the rule may fire, else the reason it may not. A rewrite returns
the ids of the table's sub-steps it performed (registry.STEPS), for `stats()`.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Optional

import torch
import torch.fx

from inductor_quant.kernels import int4pack, native, probe
from inductor_quant.kernels import onednn as K

from .fused import Fused, call, emit_before, propagate_fake, replace_with
from .kernel_limits import check_conv_kernel, check_int8_exact, check_template_weight_reuse, geometry
from .reasons import Reason, Why
from .match import ACT_DQ, ACT_RANGE, all_zero, args_of, constant_fits_fp16, constant_within, node_of, same_dims, static_shape, val, within
from .own_calls import in_use as own_kernels_in_use, takes_woq_int4
from .stats import count_kernel

if TYPE_CHECKING:
    from torch._inductor.pattern_matcher import Match

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
prims = torch.ops.prims

S8_TO_U8 = "qconv.s8_to_u8"  # a sub-step id (registry.STEPS)
S8_TO_U8_LINEAR = "qlinear.s8_to_u8"


def check_act_dq(dq_node: torch.fx.Node, kind: str) -> Optional[Reason]:
    a = args_of(dq_node)
    if dq_node.target not in ACT_DQ:
        return Why.ACT_NOT_PER_TENSOR()
    if dq_node.target is qd.dequantize_per_tensor.tensor:
        if kind != "qlinear":
            return Why.DYNAMIC_CONV()
        if any(val(t) is None or val(t).numel() != 1 for t in (a["scale"], a["zero_point"])):
            return Why.DYNAMIC_QPARAMS_SHAPE()
    # dequantize does not clamp: a narrower range (e.g. [-127, 127]) dequantizes the same way
    if a["dtype"] not in ACT_RANGE or not within(a, ACT_RANGE[a["dtype"]]):
        return Why.ACT_DTYPE(dtype=a["dtype"], lo=a["quant_min"], hi=a["quant_max"])
    return None


def check_weight_dq(w_dq: torch.fx.Node) -> Optional[Reason]:
    a = args_of(w_dq)
    if a["dtype"] != torch.int8 or not within(a, (-128, 127)):
        return Why.WEIGHT_DTYPE()
    if w_dq.target is qd.dequantize_per_channel.default and a["axis"] != 0:
        return Why.WEIGHT_AXIS()
    if w_dq.target is qd.dequantize_per_tensor.default and a["zero_point"] != 0:
        return Why.WEIGHT_ZERO_POINT()
    return None


def check_float_compute(anchor) -> Optional[Reason]:
    v = val(anchor)
    if v is None or v.dtype not in (torch.float32, torch.bfloat16):
        return Why.COMPUTE_DTYPE()
    return None


def _weight_qparams(match: Match, w_dq: torch.fx.Node, anchor: torch.fx.Node, zp_dtype: torch.dtype):
    """(w_scale, w_zp) nodes, float32 / `zp_dtype`, per-channel (per-tensor is broadcast: exact).
    Both are computed from constants, so freezing folds them into constants."""
    g = anchor.graph
    if w_dq.target is qd.dequantize_per_channel.default:
        w_scale, w_zp = match.kwargs["w_scale"], match.kwargs["w_zp"]
        if val(w_scale) is not None and val(w_scale).dtype != torch.float32:
            w_scale = call(g, anchor, prims.convert_element_type.default, w_scale, torch.float32)
        if val(w_zp) is not None and val(w_zp).dtype != zp_dtype:
            w_zp = call(g, anchor, prims.convert_element_type.default, w_zp, zp_dtype)
        return w_scale, w_zp
    # new_full from the weight (not aten.full): constant folding skips constructors without
    # tensor inputs, and these must fold into constants for the prepack to fold
    w = match.kwargs["w"]
    oc = val(w).shape[0]
    scale = float(args_of(w_dq)["scale"])
    w_scale = call(g, anchor, aten.new_full.default, w, [oc], scale, dtype=torch.float32)
    w_zp = call(g, anchor, aten.new_full.default, w, [oc], 0, dtype=zp_dtype)
    return w_scale, w_zp


def _x_qparams(dq_node) -> K.QParams:
    a = args_of(dq_node)
    if dq_node.target is qd.dequantize_per_tensor.tensor:  # run-time qparams: the .tensor overloads
        return K.QParams(a["scale"], a["zero_point"])
    return K.QParams(float(a["scale"]), int(a["zero_point"]))


def _weight_dq(match):
    return node_of(match, qd.dequantize_per_channel.default) or [
        n for n in match.nodes if n.target is qd.dequantize_per_tensor.default and n.args[0] is match.kwargs["w"]
    ][0]


def _act_dq(match):
    return next(n for n in match.nodes if n.target in ACT_DQ and n.args[0] is match.kwargs["x"])


def _float_out(anchor) -> K.Output:
    """fp32 out, or bf16 out under autocast (the traced to(bfloat16) casts feed the anchor)."""
    return K.Output(val(anchor).dtype)


# --- conv ------------------------------------------------------------------------------------


def check_dq_conv(match: Match) -> Optional[Reason]:
    conv = node_of(match, aten.convolution.default)
    if args_of(conv)["transposed"]:
        return Why.TRANSPOSED_CONV()
    act_dq, w_dq = _act_dq(match), _weight_dq(match)
    return (check_float_compute(conv) or check_act_dq(act_dq, "qconv") or check_weight_dq(w_dq)
            or check_conv_kernel(conv, act_dq, w_dq))


def shift_s8_to_u8(x, xq: K.QParams):
    # s * (x_s8 - z) == s * ((x_s8 + 128) - (z + 128)): exact; qconv takes uint8 only, and a
    # linear's s8 activations fall to oneDNN's reference matmul on VNNI CPUs (_signed_as_unsigned)
    return _signed_as_unsigned(x), K.QParams(xq.scale, xq.zero_point + 128)


def prepack_qconv(match: Match) -> tuple:
    # conv(dq(x), dq(w), b) -> onednn.qconv_pointwise(x, prepack(w), b)   (fp32 out)
    conv = node_of(match, aten.convolution.default)
    geom = geometry(conv)
    xq, x, steps = _x_qparams(_act_dq(match)), match.kwargs["x"], ()
    if args_of(_act_dq(match))["dtype"] == torch.int8:
        x, xq = shift_s8_to_u8(x, xq)
        steps = (S8_TO_U8,)
    w_scale, w_zp = _weight_qparams(match, _weight_dq(match), conv, torch.int64)
    packed = K.qconv_prepack(lambda op, args: call(conv.graph, conv, op, *args), match.kwargs["w"], w_scale, xq,
                             geom, static_shape(x))
    f = Fused("qconv", x, xq, packed, w_scale, w_zp, match.kwargs.get("b"), geom, _float_out(conv))
    replace_with(conv, f)
    match.erase_nodes()
    return steps


# --- linear ----------------------------------------------------------------------------------


def check_dq_linear(match: Match) -> Optional[Reason]:
    act_dq, w_dq = _act_dq(match), _weight_dq(match)
    return (check_linear_form(match) or check_float_compute(match.output_node()) or check_act_dq(act_dq, "qlinear")
            or check_weight_dq(w_dq) or check_int8_exact(act_dq, w_dq)
            or check_template_weight_reuse(match.kwargs["w"]))


def check_linear_form(match: Match) -> Optional[Reason]:
    """The traced forms of F.linear (2-D, N-D views, one row, bmm) compute a linear here."""
    if any(list(args_of(p)["dims"]) != [1, 0] for p in match.nodes if p.target is aten.permute.default):
        return Why.WEIGHT_PERMUTE()
    # one-row form: mul(sum(..), alpha), mul(b, beta), sum over dim 0 -- all must be the identity
    for n in match.nodes:
        if n.target is aten.mul.Tensor and not isinstance(n.args[1], torch.fx.Node) and n.args[1] != 1:
            return Why.ADDMM_SCALED()
        if n.target is aten.sum.dim_IntList and list(n.args[1]) != [0]:
            return Why.ONE_ROW_SUM_DIM()
    bmm = node_of(match, aten.bmm.default)
    if bmm is not None and (reason := _check_bmm_is_linear(match, bmm)):
        return reason
    views = [n for n in match.nodes if n.target is aten.view.default]
    if views:  # N-D input flattened to 2-D and back: leading dims must round-trip (symbolic ok)
        vx, vo = val(match.kwargs["x"]), val(match.output_node())
        if vx is None or vo is None or not same_dims(vx.shape[:-1], vo.shape[:-1]):
            return Why.ND_VIEW()
    return None


def _check_bmm_is_linear(match: Match, bmm: torch.fx.Node) -> Optional[Reason]:
    """bmm(expand(dq(x)), expand(permute(dq(w)))) [+ b] is linear(x, w, b) when the input's expand
    keeps its shape, the weight is a 2-D matrix broadcast over the batch and `b` (the add's other
    operand, any tensor in the pattern) is a vector of the output's width. Past 3-D the input
    is copied contiguous and viewed as 3-D, the weight's broadcast viewed alike, the result
    viewed back (check_linear_form checks that view)."""
    x_expand, w_expand = (_expand_under(n) for n in bmm.args[:2])
    vx, vo = val(match.kwargs["x"]), val(match.output_node())
    if vx is None or vo is None or x_expand is None or vx.dim() < 3 or not same_dims(val(x_expand).shape, vx.shape):
        return Why.BMM_NOT_LINEAR(detail="the input is broadcast")
    if w_expand is None or val(w_expand.args[0]) is None or val(w_expand.args[0]).dim() != 2:
        return Why.BMM_NOT_LINEAR(detail="the weight is not one matrix broadcast over the batch")
    vb = val(match.kwargs.get("b"))
    if "b" in match.kwargs and (vb is None or vb.dim() != 1 or not same_dims(vb.shape, vo.shape[-1:])):
        return Why.BMM_NOT_LINEAR(detail="the added tensor is not a bias vector")
    return None


def _expand_under(node) -> Optional[torch.fx.Node]:
    """The expand a bmm operand comes from, through the view (and copy) that make it 3-D."""
    while isinstance(node, torch.fx.Node) and node.target in (aten.view.default, aten.clone.default):
        node = node.args[0]
    return node if isinstance(node, torch.fx.Node) and node.target is aten.expand.default else None


def _contiguous(x: torch.fx.Node) -> torch.fx.Node:
    """x copied to contiguous (the input a bmm-form linear reads is a permuted view)."""
    return _shared_after(x, aten.clone.default, (), {"memory_format": torch.contiguous_format})


def _shared_after(node: torch.fx.Node, op, args: tuple, kwargs: dict) -> torch.fx.Node:
    """op(node, *args, **kwargs), one per node right after it, shared by every linear reading it
    (so siblings on one input still read the same node and merge)."""
    for user in node.users:
        if user.target is op and tuple(user.args[1:]) == args and user.kwargs == kwargs:
            return user
    with node.graph.inserting_after(node):
        out = node.graph.call_function(op, (node, *args), kwargs)
    propagate_fake(out)
    return out


def _runtime_qparams_as_kernels_take(xq: K.QParams, anchor) -> K.QParams:
    """Run-time activation qparams (choose_qparams: float64 scale, int64 zero point) as float32 /
    int32: Inductor's C++ GEMM template reads the scale tensor as float32, and a float64 one came
    out as garbage (outputs ~1e36: fuzzer finding); oneDNN's op converts either way."""
    if not xq.is_tensor:
        return xq
    return K.QParams(_as_dtype(xq.scale, torch.float32), _as_dtype(xq.zero_point, torch.int32))


def _as_dtype(node: torch.fx.Node, dtype: torch.dtype) -> torch.fx.Node:
    """node cast to dtype (shared: _shared_after)."""
    if val(node) is None or val(node).dtype == dtype:
        return node
    return _shared_after(node, prims.convert_element_type.default, (dtype,), {})


def prepack_qlinear(match: Match) -> tuple:
    # [view](addmm|mm([view](dq(x)), permute(dq(w)))) -> onednn.qlinear_pointwise(x, prepack(w), b)
    # bmm(expand(dq(x)), expand(permute(dq(w)))) [+ b] -> the same on a contiguous copy of x
    out = match.output_node()
    xq, x = _runtime_qparams_as_kernels_take(_x_qparams(_act_dq(match)), out), match.kwargs["x"]
    if node_of(match, aten.bmm.default) is not None:
        x = _contiguous(x)
    steps = ()
    if args_of(_act_dq(match))["dtype"] == torch.int8 and isinstance(xq.zero_point, int):
        x, xq = shift_s8_to_u8(x, xq)
        steps = (S8_TO_U8_LINEAR,)
    # int32 zero points: the form Inductor's qlinear lowering keeps (it re-creates an int64 one)
    w_scale, w_zp = _weight_qparams(match, _weight_dq(match), out, torch.int32)
    packed = K.qlinear_prepack(lambda op, args: call(out.graph, out, op, *args), match.kwargs["w"], static_shape(x))
    replace_with(out, Fused("qlinear", x, xq, packed, w_scale, w_zp, match.kwargs.get("b"), out=_float_out(out)))
    match.erase_nodes()
    return steps


# --- fp16 weights ----------------------------------------------------------------------------


def check_fp16_weight_linear(match: Match) -> Optional[Reason]:
    """fp32 activations (bf16 autocast traces another graph), the weight rounded fp32 -> fp16 -> fp32."""
    w = match.kwargs["w"]
    rounds = {n.args[0] is w: n.args[1] for n in match.nodes if n.target is qd.convert_element_type.no_fuse}
    if rounds != {True: torch.float16, False: torch.float32}:
        return Why.FP16_WEIGHT_FORM(detail="the weight's round trip is not fp32 -> fp16 -> fp32")
    dtypes = {val(n).dtype if val(n) is not None else None for n in (match.kwargs["x"], w, match.output_node())}
    if dtypes != {torch.float32}:
        return Why.FP16_WEIGHT_FORM(detail="input, weight and output must be fp32")
    return check_linear_form(match)


def prepack_fp16_weight_linear(match: Match) -> tuple:
    # [relu](linear(x, fp32(fp16(w)), b)) -> onednn.linear_[relu_]dynamic_fp16(x, prepack_fp16(w), b)
    out = match.output_node()
    x = match.kwargs["x"]
    if node_of(match, aten.bmm.default) is not None:
        x = _contiguous(x)
    build = lambda op, args: call(out.graph, out, op, *args)  # noqa: E731
    packed = K.linear_fp16_prepack(build, match.kwargs["w"], static_shape(x))
    relu = node_of(match, aten.relu.default) is not None
    out.replace_all_uses_with(K.linear_fp16(build, x, packed, match.kwargs.get("b"), relu))
    match.erase_nodes()
    return ()


# --- weight-only int8 -------------------------------------------------------------------------


def _float_activation(match: Match, form: Why) -> Optional[Reason]:
    """A weight-only rule's input: a float activation (not a dequantized one: that is an int8
    layer, its own rule decides, even when it refused), input and output in one float dtype (fp32,
    or bf16 under autocast)."""
    x = match.kwargs["x"]
    source = x.args[0] if isinstance(x, torch.fx.Node) and x.target is prims.convert_element_type.default else x
    if isinstance(source, torch.fx.Node) and source.target in (*ACT_DQ, qd.dequantize_per_token.default):
        return Why.OTHER_RULE(detail="the input is dequantized")
    dtypes = {val(n).dtype if val(n) is not None else None for n in (x, match.output_node())}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.bfloat16}:
        return form(detail="input and output must be both fp32 or both bf16")
    return None


def check_woq_int8_linear(match: Match) -> Optional[Reason]:
    """A float input (not a dequantize: that is an int8 layer, its own rule decides), input and
    output in one float dtype (fp32, or bf16 under autocast), an int8 weight symmetric per output
    channel (zero points all 0: the kernel takes none), and our kernel layer in this compile:
    torch has no op that keeps the weight int8 and is faster than the float linear on the
    dequantized weight, which is what runs otherwise."""
    x, w_dq = match.kwargs["x"], _weight_dq(match)
    reason = _float_activation(match, Why.WOQ_FORM)
    if reason is not None:
        return reason
    a = args_of(w_dq)
    if w_dq.target is not qd.dequantize_per_channel.default or a["dtype"] != torch.int8 or a["axis"] != 0:
        return Why.WOQ_FORM(detail="the weight is not int8 per channel on axis 0")
    if not own_kernels_in_use():
        return Why.ACT_NOT_DEQUANTIZED()
    if not all_zero(match.kwargs["w_zp"]):
        return Why.WOQ_FORM(detail="the weight's zero points are not all 0 (or not constants)")
    if not probe.weight_only_linear_builds(val(x).dtype):
        return Why.WOQ_UNBUILDABLE(dtype=str(val(x).dtype).replace("torch.", ""))
    return check_linear_form(match)


def lower_woq_int8_linear(match: Match, grouped: bool = False) -> tuple:
    # [view](addmm|mm([view](x), permute([cast](dq(w))))) -> iq_onednn.woq_linear(x, w, scale, [cast](b));
    # grouped (the int4 form with 8-bit values, reshape(dq(w_grouped))): w viewed as [N, K], the
    # scales as [N, K / group]
    out = match.output_node()
    c = lambda op, args: call(out.graph, out, op, *args)  # noqa: E731
    x = match.kwargs["x"]
    if node_of(match, aten.bmm.default) is not None:
        x = _contiguous(x)
    w, scale = match.kwargs["w"], match.kwargs["w_scale"]
    # group scales that are all fp16 values (our quantizer rounds them so) as fp16: half the scale
    # bytes a decode step streams, the same numbers (the kernel widens them exactly)
    half = grouped and constant_fits_fp16(scale)
    scale = _as_dtype(scale, torch.float16 if half else torch.float32)
    if grouped:
        n, k, group = _grouped_geometry(match)
        w, scale = c(aten.view.default, (w, [n, k])), c(aten.view.default, (scale, [n, k // group]))
    b = match.kwargs.get("b")
    if b is not None:
        b = _as_dtype(b, val(out).dtype)
    new = native.woq_linear(c, x, w, scale, b, static_shape(x))
    out.replace_all_uses_with(new)
    match.erase_nodes()
    count_kernel("woq_linear")
    return ()


# --- weight-only int4 (group-wise) -------------------------------------------------------------


def _grouped_geometry(match: Match) -> tuple:
    """(N, K, group) of the matched weight: the grouped constant [N * K / group, group] reshaped to [N, K]."""
    w_dq = _weight_dq(match)
    reshape = next(iter(w_dq.users))
    (n, k), group = val(reshape).shape, val(match.kwargs["w"]).shape[1]
    return int(n), int(k), int(group)


def check_woq_int4_linear(match: Match) -> Optional[Reason]:
    """A float input (not a dequantize), input and output in one float dtype (fp32, or bf16 under
    autocast), a 4-bit weight per group (values in [-8, 7], zero points constants in that range:
    0 when symmetric), and a
    geometry torch's int4 CPU GEMM takes (kernels/int4pack.py). Lowered to our
    `iq_onednn.woq_int4_linear` where our kernel layer is in the compile (own_calls.takes_woq_int4),
    else to torch's op: an ATen op, which every wrapper and AOTInductor run."""
    w_dq = _weight_dq(match)
    reason = _float_activation(match, Why.WOQ_INT4_FORM)
    if reason is not None:
        return reason
    a = args_of(w_dq)
    if w_dq.target is qd.dequantize_per_channel.default and a["dtype"] == torch.int8 and not within(a, (-8, 7)):
        return Why.OTHER_RULE(detail="the weight is 8-bit per group")  # check_woq_grouped_int8_linear's
    if w_dq.target is not qd.dequantize_per_channel.default or a["dtype"] != torch.int8 or a["axis"] != 0:
        return Why.WOQ_INT4_FORM(detail="the weight is not 4-bit ([-8, 7]) per group")
    if not constant_within(match.kwargs["w_zp"], -8, 7):
        return Why.WOQ_INT4_FORM(detail="the weight's zero points are not constants in [-8, 7]")
    n, k, group = _grouped_geometry(match)
    if not int4pack.supports(n, k, group):
        return Why.WOQ_INT4_GEOMETRY(n=n, k=k, group=group)
    return check_linear_form(match)


def lower_woq_int4_linear(match: Match) -> tuple:
    # [view](addmm|mm([view](x), permute([cast](reshape(dq(w)))))) -> iq_onednn.woq_int4_linear(x, our pack(w), pairs, g, b)
    #   or, without our kernels: view(int4pack_mm(x as [M, K], pack(w), g, sz) [+ b])
    out = match.output_node()
    graph = out.graph
    x = match.kwargs["x"]
    if node_of(match, aten.bmm.default) is not None:
        x = _contiguous(x)
    n, k, group = _grouped_geometry(match)
    dtype = val(out).dtype
    c = lambda op, args: call(graph, out, op, *args)  # noqa: E731
    b = match.kwargs.get("b")
    if takes_woq_int4(x):  # ours: one call with the bias, any leading shape
        pairs = int4pack.scale_zeros(c, match.kwargs["w_scale"], match.kwargs["w_zp"], n, k, group, dtype,
                                     channels_first=True)
        y = native.woq_int4_linear(c, x, native.woq_int4_pack(c, match.kwargs["w"], n, k), pairs, group,
                                   None if b is None else _as_dtype(b, dtype))
        out.replace_all_uses_with(y)
        match.erase_nodes()
        count_kernel("woq_int4_linear")
        return ()
    packed = int4pack.pack(c, match.kwargs["w"], n, k)
    sz = int4pack.scale_zeros(c, match.kwargs["w_scale"], match.kwargs["w_zp"], n, k, group, dtype)
    y = int4pack.mm(c, c(aten.view.default, (x, [-1, k])), packed, group, sz)
    if b is not None:
        y = c(aten.add.Tensor, (y, _as_dtype(b, dtype)))
    leading = [d if isinstance(d, int) else c(aten.sym_size.int, (x, i)) for i, d in enumerate(val(x).shape[:-1])]
    if len(leading) != 1:
        y = c(aten.view.default, (y, [*leading, n]))
    out.replace_all_uses_with(y)
    match.erase_nodes()
    return ()


# --- weight-only int8, group-wise ----------------------------------------------------------------


def check_woq_grouped_int8_linear(match: Match) -> Optional[Reason]:
    """A float input (not a dequantize), input and output in one float dtype, an int8 weight per
    group (the int4 rule's pattern with a dequantize range beyond [-8, 7]), symmetric (zero points all 0: the
    kernel takes scales only), groups a multiple of 32, and our kernel layer in this compile: torch
    has no op that keeps the weight int8 with a scale per group; the float linear on the
    dequantized weight runs otherwise."""
    w_dq = _weight_dq(match)
    reason = _float_activation(match, Why.WOQ_FORM)
    if reason is not None:
        return reason
    a = args_of(w_dq)
    if w_dq.target is not qd.dequantize_per_channel.default or a["dtype"] != torch.int8 or a["axis"] != 0:
        return Why.WOQ_FORM(detail="the weight is not int8 per group")
    if within(a, (-8, 7)):  # 4-bit values: the int4 rule's, which keeps its own reason when it refuses
        return Why.OTHER_RULE(detail="the weight is 4-bit per group")
    if not own_kernels_in_use():
        return Why.ACT_NOT_DEQUANTIZED()
    if not all_zero(match.kwargs["w_zp"]):
        return Why.WOQ_FORM(detail="the group-wise weight's zero points are not all 0 (or not constants)")
    n, k, group = _grouped_geometry(match)
    if group % 32 or k % group:
        return Why.WOQ_FORM(detail=f"groups of {group} input channels: our kernel takes multiples of 32")
    return check_linear_form(match)


def lower_woq_grouped_int8_linear(match: Match) -> tuple:
    return lower_woq_int8_linear(match, grouped=True)


# --- per-token dynamic int8 ----------------------------------------------------------------------


def check_per_token_linear(match: Match) -> Optional[Reason]:
    """Row scales from choose_qparams_per_token (symmetric: the zero points are zeros by
    construction), an int8 per-channel weight, a linear form, and a kernel exact on this CPU."""
    act_dq, w_dq = node_of(match, qd.dequantize_per_token.default), _weight_dq(match)
    a = args_of(act_dq)
    chosen = {n.args[0].target if isinstance(n, torch.fx.Node) and n.target is operator.getitem else None
              for n in (a["scales"], a["zero_points"])}
    if chosen != {qd.choose_qparams_per_token.default} or a["dtype"] != torch.int8 or not within(a, (-128, 127)):
        return Why.PER_TOKEN_FORM(detail="the activation is not int8 with row scales from choose_qparams_per_token")
    if w_dq.target is not qd.dequantize_per_channel.default:
        return Why.PER_TOKEN_FORM(detail="the weight is not quantized per channel")
    return (check_linear_form(match) or check_float_compute(match.output_node()) or check_weight_dq(w_dq)
            or check_int8_exact(act_dq, w_dq) or check_template_weight_reuse(match.kwargs["w"]))


def _signed_as_unsigned(x: torch.fx.Node) -> torch.fx.Node:
    """int8 values as uint8 with zero point 128 (x + 128, exact). oneDNN's fast int8 GEMMs on
    VNNI take u8 activations against weights packed with a zero-point compensation (how every
    linear here is packed); with s8 activations they need another compensation, and oneDNN fell
    back to its reference matmul (`ref_int8`, ~100x slower: Gemma-3-270M per-token linears,
    ONEDNN_VERBOSE). Widened to int32 for the add: Inductor's C++ code vectorizes int8 -> int32
    -> uint8 but not the int16 chain, which left the quantize kernel after each norm and GELU
    scalar (Gemma-3-270M prefill: 6 + 6 ms of 52). Shared (_shared_after), so siblings still read
    one node and merge."""
    wide = _shared_after(x, prims.convert_element_type.default, (torch.int32,), {})
    shifted = _shared_after(wide, aten.add.Tensor, (128,), {})
    return _shared_after(shifted, prims.convert_element_type.default, (torch.uint8,), {})


def prepack_per_token_linear(match: Match) -> tuple:
    # linear(dq_per_token(x, s), dq(w), b) == qlinear(x + 128 as u8 with scale 1 and zero point
    # 128, w) * s + b: the int32 sums are exact, each row then takes its scale (Inductor fuses the
    # shift into the quantize kernel and the epilogue after the GEMM)
    out = match.output_node()
    graph, x = out.graph, match.kwargs["x"]
    scales = args_of(node_of(match, qd.dequantize_per_token.default))["scales"]
    if node_of(match, aten.bmm.default) is not None:
        x = _contiguous(x)
    x = _signed_as_unsigned(x)
    w_scale, w_zp = _weight_qparams(match, _weight_dq(match), out, torch.int32)
    packed = K.qlinear_prepack(lambda op, args: call(graph, out, op, *args), match.kwargs["w"], static_shape(x))
    fused = emit_before(out, Fused("qlinear", x, K.QParams(1.0, 128), packed, w_scale, w_zp, None,
                                   out=K.Output(torch.float32)))
    y = call(graph, out, aten.mul.Tensor, fused, _as_dtype(scales, torch.float32))
    b = match.kwargs.get("b")
    if b is not None:
        y = call(graph, out, aten.add.Tensor, y, _as_dtype(b, torch.float32))
    if val(out).dtype != torch.float32:  # bf16 autocast: the linear's output dtype
        y = call(graph, out, prims.convert_element_type.default, y, val(out).dtype)
    out.replace_all_uses_with(y)
    match.erase_nodes()
    return ()
