"""Prepack and int8-propagation rules, and the helpers every rule shares.

A `check_*` returns None when the rule may fire, else the reason it may not.

Handlers read named bindings (`match.kwargs[...]`) and schema-named node arguments (`args_of`),
never positions.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.fx
from torch._inductor.pattern_matcher import Match
from torch.fx.experimental.symbolic_shapes import free_symbols, statically_known_true

from inductor_quant.kernels import cpu
from inductor_quant.kernels import onednn as K

from . import stats as S
from .fused import Fused, call, propagate_fake, replace_with

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
prims = torch.ops.prims

ACT_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def args_of(node: torch.fx.Node) -> dict:
    """The node's arguments by schema name (defaults filled in)."""
    out = {}
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def node_of(match: Match, *targets) -> Optional[torch.fx.Node]:
    return next((n for n in match.nodes if n.target in targets), None)


def val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _same_dims(a, b) -> bool:
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def _static_shape(node) -> Optional[list]:
    v = val(node)
    return None if v is None or free_symbols(v.shape) else list(v.shape)


# --- activation / weight dequantize --------------------------------------------------------


ACT_DQ = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor)


def check_act_dq(dq_node: torch.fx.Node, kind: str) -> Optional[str]:
    a = args_of(dq_node)
    if dq_node.target not in ACT_DQ:
        return "activation dequantize is not per-tensor"
    if dq_node.target is qd.dequantize_per_tensor.tensor:
        if kind != "qlinear":
            return "dynamic (tensor-qparam) activation: fused for linear only"
        if any(val(t) is None or val(t).numel() != 1 for t in (a["scale"], a["zero_point"])):
            return "dynamic activation qparams are not one-element tensors"
    # dequantize does not clamp: a narrower range (e.g. [-127, 127]) dequantizes the same way
    if a["dtype"] not in ACT_RANGE or not within(a, ACT_RANGE[a["dtype"]]):
        return f"activation is not uint8/int8 (dtype {a['dtype']} [{a['quant_min']}, {a['quant_max']}])"
    return None


def within(a: dict, bounds: tuple) -> bool:
    """quant_min / quant_max of a q/dq node within `bounds`."""
    return bounds[0] <= a["quant_min"] <= a["quant_max"] <= bounds[1]


def check_weight_dq(w_dq: torch.fx.Node) -> Optional[str]:
    a = args_of(w_dq)
    if a["dtype"] != torch.int8 or not within(a, (-128, 127)):
        return "weight is not int8"
    if w_dq.target is qd.dequantize_per_channel.default and a["axis"] != 0:
        return "per-channel weight quantized on an axis other than 0"
    if w_dq.target is qd.dequantize_per_tensor.default and a["zero_point"] != 0:
        return "per-tensor weight with non-zero zero point"
    return None


def act_raw_max(dq_node: torch.fx.Node) -> int:
    """Largest raw uint8 value the kernel multiplies: int8 activations are shifted by +128 first
    (by us for conv, by oneDNN for linear)."""
    a = args_of(dq_node)
    return int(a["quant_max"]) + (128 if a["dtype"] == torch.int8 else 0)


def weight_absmax(w_dq: torch.fx.Node) -> int:
    a = args_of(w_dq)
    return max(abs(int(a["quant_min"])), abs(int(a["quant_max"])))


SATURATION_TAG = "8-bit activations and 8-bit weights on a CPU without VNNI"
SATURATION = (
    "8-bit activations and 8-bit weights on a CPU without VNNI ({isa}): oneDNN would add pairs of "
    "int8 products in int16 and saturate, so the layer stays dequantize -> fp32 -> quantize (exact, "
    "slower); quantize with the default config (reduce_range='auto': 7-bit weights on this CPU) to fuse it"
)
SATURATION_WARNING = (
    "inductor_quant: this model was quantized with 8-bit activations and 8-bit weights, but oneDNN on "
    "this CPU ({isa}) adds pairs of int8 products in int16 and would saturate (wrong results), so those "
    "quantized conv/linear layers stay in fp32 (exact, slower; `inductor_quant.passes.stats()` lists them). "
    "Fix: quantize with get_default_x86_inductor_quantization_config() (reduce_range='auto' picks 7-bit "
    "weights on this CPU), or reduce_range=True (7-bit activations)."
)
_saturation_warned = [False]


def check_int8_exact(act_dq: torch.fx.Node, w_dq: torch.fx.Node) -> Optional[str]:
    """The fused kernel must compute what the eager Q/DQ model computes on this CPU
    (kernels/cpu.py): without VNNI, only activations and weights whose pair sums fit int16."""
    if cpu.fuses_exactly(act_raw_max(act_dq), weight_absmax(w_dq)):
        return None
    isa = cpu.cpu_info().isa()
    if not _saturation_warned[0]:
        _saturation_warned[0] = True
        warnings.warn(SATURATION_WARNING.format(isa=isa), UserWarning, stacklevel=2)
    return SATURATION.format(isa=isa)


def reset_saturation_warning() -> None:
    _saturation_warned[0] = False


def users_inside(match: Match, node: torch.fx.Node) -> bool:
    inside = set(match.nodes)
    return all(u in inside for u in node.users)


def _weight_qparams(match: Match, w_dq: torch.fx.Node, anchor: torch.fx.Node):
    """(w_scale, w_zp) nodes, float32 / int64, per-channel (per-tensor is broadcast: exact)."""
    g = anchor.graph
    if w_dq.target is qd.dequantize_per_channel.default:
        w_scale, w_zp = match.kwargs["w_scale"], match.kwargs["w_zp"]
        if val(w_scale) is not None and val(w_scale).dtype != torch.float32:
            w_scale = call(g, anchor, prims.convert_element_type.default, w_scale, torch.float32)
        return w_scale, w_zp
    # new_full from the weight (not aten.full): constant folding skips constructors without
    # tensor inputs, and these must fold into constants for the prepack to fold
    w = match.kwargs["w"]
    oc = val(w).shape[0]
    scale = float(args_of(w_dq)["scale"])
    w_scale = call(g, anchor, aten.new_full.default, w, [oc], scale, dtype=torch.float32)
    w_zp = call(g, anchor, aten.new_full.default, w, [oc], 0, dtype=torch.int64)
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


def check_float_compute(anchor) -> Optional[str]:
    v = val(anchor)
    if v is None or v.dtype not in (torch.float32, torch.bfloat16):
        return "conv/linear computes in a dtype other than fp32/bf16"
    return None


# --- int8 propagation ----------------------------------------------------------------------

_QPARAM_KEYS = ("scale", "zero_point", "quant_min", "quant_max", "dtype")


def check_same_qparams(match: Match) -> Optional[str]:
    q = match.output_node()
    dqs = [n for n in match.nodes if n.target in ACT_DQ]
    if q.target is not qd.quantize_per_tensor.default or any(d.target is not ACT_DQ[0] for d in dqs):
        return "int8 propagation needs scalar qparams"
    want = tuple(args_of(q)[k] for k in _QPARAM_KEYS)
    if want[4] not in ACT_RANGE or any(tuple(args_of(d)[k] for k in _QPARAM_KEYS) != want for d in dqs):
        return "inputs and output quantized differently"
    return None


def propagate_int8(match: Match) -> None:
    # q(op(dq(x))) -> op(x)   exact: max, views and cat commute with a shared affine dequantize
    q, dqs = match.output_node(), [n for n in match.nodes if n.target in ACT_DQ]
    for d in dqs:
        d.replace_all_uses_with(d.args[0])
        d.graph.erase_node(d)
    inner = q.args[0]
    q.replace_all_uses_with(inner)
    q.graph.erase_node(q)
    for n in match.graph.nodes:  # graph order: re-derive the int8 fake values
        if n in match.nodes and not n._erased:
            propagate_fake(n)


# --- prepack -------------------------------------------------------------------------------


def check_dq_conv(match: Match) -> Optional[str]:
    conv = node_of(match, aten.convolution.default)
    if args_of(conv)["transposed"]:
        return "transposed convolution"
    act_dq, w_dq = _act_dq(match), _weight_dq(match)
    # saturation last: a layer refused only for it has a geometry oneDNN's fp32 conv takes too
    # (registry.decompose_weight_dequants hands it one); the probe after the window check,
    # since probing such a conv would crash
    return (check_float_compute(conv) or check_act_dq(act_dq, "qconv") or check_weight_dq(w_dq)
            or _check_dynamic_layout(conv) or _check_window_in_padding(conv)
            or _check_known_wrong_results(conv, act_dq, w_dq) or check_int8_exact(act_dq, w_dq))


def _check_dynamic_layout(conv: torch.fx.Node) -> Optional[str]:
    """Under dynamic shapes Inductor's conv lowering expects a contiguous output when the input is
    both contiguous and channels-last (1 channel, or 1 pixel), assuming an unpacked weight; the
    prepacked int8 kernel writes channels-last, so the compiled code would fail its stride check."""
    x, out = conv.args[0].meta.get("val"), conv.meta.get("val")
    if x is None or out is None or all(isinstance(d, int) for d in out.shape):
        return None
    spatial = 1
    for d in x.shape[2:]:
        spatial *= d
    if any(isinstance(v, int) and v == 1 for v in (x.shape[1], spatial)):
        return "dynamic shapes with a 1-channel or 1-pixel input (Inductor would mispredict the output layout)"
    return None


def _check_known_wrong_results(conv: torch.fx.Node, act_dq: torch.fx.Node, w_dq: torch.fx.Node) -> Optional[str]:
    """torch 2.13's int8 oneDNN conv returns wrong values for some strided convs with output width
    1 and for conv3d over depth 1 with a deeper kernel (differential fuzzer findings, corpus repros
    in tests/fuzz/corpus). Convs of those classes are fused only if the kernel, run once on this
    geometry, matches the reference (kernels.onednn.qconv_is_exact)."""
    x, w, out = (n.meta.get("val") for n in (conv.args[0], conv.args[1], conv))
    if x is None or w is None or out is None:
        return None
    a = args_of(conv)
    suspect = (_is(out.shape[-1], 1) and any(s > 1 for s in a["stride"])) or (
        x.dim() == 5 and _is(x.shape[2], 1) and w.shape[2] > 1)
    if not suspect:
        return None
    if free_symbols(tuple(x.shape[1:])):
        return "suspect geometry with symbolic sizes (cannot probe the int8 kernel)"
    shape = (1, *(int(d) for d in x.shape[1:]))  # the probe runs batch 1; the batch may be symbolic
    geom = K.ConvGeometry(tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])
    act_max, w_max = act_raw_max(act_dq), min(127, weight_absmax(w_dq))
    if not cpu.fuses_exactly(act_max, w_max):  # the probe looks for geometry bugs, not saturation
        act_max = 127
    if not K.qconv_is_exact(shape, tuple(w.shape), geom, act_max, w_max):
        return "the int8 oneDNN kernel computes this geometry wrong (probed; torch 2.13)"
    return None


def _check_window_in_padding(conv: torch.fx.Node) -> Optional[str]:
    """The oneDNN conv (int8 and bf16, eager too) segfaults when some output window lies entirely
    in the padding, e.g. input height 1, padding 3, dilation 2 (fuzzer finding, corpus repro)."""
    x, w = conv.args[0].meta.get("val"), conv.args[1].meta.get("val")
    if x is None or w is None:
        return None
    a = args_of(conv)
    if any(_window_misses_input(*dim) for dim in zip(x.shape[2:], w.shape[2:], a["stride"], a["padding"], a["dilation"])):
        return "an output window lies entirely in the padding (the oneDNN conv crashes on such geometries)"
    return None


def _window_misses_input(size, kernel: int, stride: int, pad: int, dilation: int) -> bool:
    """Along one dim: does some output position read only padding?"""
    if not pad or not isinstance(size, int):
        return False
    n_out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return any(all(not 0 <= o * stride - pad + j * dilation < size for j in range(kernel)) for o in range(n_out))


def _is(dim, value: int) -> bool:
    return isinstance(dim, int) and dim == value


def shift_s8_to_u8(x, xq: K.QParams, anchor):
    # s * (x_s8 - z) == s * ((x_s8 + 128) - (z + 128)): exact; qconv takes uint8 only
    g = anchor.graph
    wide = call(g, anchor, prims.convert_element_type.default, x, torch.int16)
    shifted = call(g, anchor, aten.add.Tensor, wide, 128)
    x_u8 = call(g, anchor, prims.convert_element_type.default, shifted, torch.uint8)
    S.count("qconv.s8_to_u8")
    return x_u8, K.QParams(xq.scale, xq.zero_point + 128)


def prepack_qconv(match: Match) -> None:
    # conv(dq(x), dq(w), b) -> onednn.qconv_pointwise(x, prepack(w), b)   (fp32 out)
    conv = node_of(match, aten.convolution.default)
    a = args_of(conv)
    geom = K.ConvGeometry(tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])
    xq, x = _x_qparams(_act_dq(match)), match.kwargs["x"]
    if args_of(_act_dq(match))["dtype"] == torch.int8:
        x, xq = shift_s8_to_u8(x, xq, conv)
    w_scale, w_zp = _weight_qparams(match, _weight_dq(match), conv)
    packed = K.qconv_prepack(lambda op, args: call(conv.graph, conv, op, *args), match.kwargs["w"], w_scale, xq,
                             geom, _static_shape(x))
    f = Fused("qconv", x, xq, packed, w_scale, w_zp, match.kwargs.get("b"), geom, _float_out(conv))
    replace_with(conv, f)
    match.erase_nodes()


def check_dq_linear(match: Match) -> Optional[str]:
    if any(list(args_of(p)["dims"]) != [1, 0] for p in match.nodes if p.target is aten.permute.default):
        return "weight permute is not a transpose"
    # one-row form: mul(sum(..), alpha), mul(b, beta), sum over dim 0 -- all must be the identity
    for n in match.nodes:
        if n.target is aten.mul.Tensor and not isinstance(n.args[1], torch.fx.Node) and n.args[1] != 1:
            return "addmm with alpha/beta != 1"
        if n.target is aten.sum.dim_IntList and list(n.args[1]) != [0]:
            return "one-row linear summed over an unexpected dim"
    views = [n for n in match.nodes if n.target is aten.view.default]
    if views:  # N-D input flattened to 2-D and back: leading dims must round-trip (symbolic ok)
        vx, vo = val(match.kwargs["x"]), val(match.output_node())
        if vx is None or vo is None or not _same_dims(vx.shape[:-1], vo.shape[:-1]):
            return "N-D linear whose output view does not restore the input's leading dims"
    act_dq, w_dq = _act_dq(match), _weight_dq(match)
    return (check_float_compute(match.output_node()) or check_act_dq(act_dq, "qlinear") or check_weight_dq(w_dq)
            or check_int8_exact(act_dq, w_dq))


def prepack_qlinear(match: Match) -> None:
    # [view](addmm|mm([view](dq(x)), permute(dq(w)))) -> onednn.qlinear_pointwise(x, prepack(w), b)
    out = match.output_node()
    xq, x = _x_qparams(_act_dq(match)), match.kwargs["x"]
    w_scale, w_zp = _weight_qparams(match, _weight_dq(match), out)
    packed = K.qlinear_prepack(lambda op, args: call(out.graph, out, op, *args), match.kwargs["w"], _static_shape(x))
    replace_with(out, Fused("qlinear", x, xq, packed, w_scale, w_zp, match.kwargs.get("b"), out=_float_out(out)))
    match.erase_nodes()
