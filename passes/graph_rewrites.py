"""The whole-graph rewrites that are not patterns: before the phases, views that give back the
shape they were given go and a shared dequantize is duplicated per user; after them, sibling
linears on one input merge into one GEMM (int8 and weight-only alike), 1-D convs
take the 2-D form the kernel runs (and, under dynamic shapes, give back the layout the graph was
traced with), and the weights of layers refused for saturation fold to fp32."""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx

from inductor_quant.kernels import native
from inductor_quant.kernels import onednn as K

from .diagnostics import consumer, is_weight_dq, quantized_compute, why
from .fused import call, emit_before, record
from .match import DEQUANTS, args_of, has_symbolic, same_dims, val
from .reasons import Why

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
prims = torch.ops.prims


def promote_dequant(graph: torch.fx.Graph) -> list:
    """dq(x) -> {a, b}  =>  dq(x) -> a, dq'(x) -> b, so each chain can fuse. Returns
    (the dequantize's target, copies made, how many single-user casts / views followed it in
    every user chain: torch's promotion counts those nodes too) per dequantize promoted."""
    promoted = []
    for node in list(graph.nodes):
        if node.target in DEQUANTS and len(node.users) > 1:
            users = list(node.users)
            for user in users[1:]:
                with graph.inserting_before(user):
                    copy = graph.node_copy(node)
                user.replace_input_with(node, copy)
            promoted.append((node.target, len(users) - 1, _cast_and_view_steps(users)))
    return promoted


def drop_noop_views(graph: torch.fx.Graph) -> int:
    """Views that give back the shape they were given, which Inductor drops only after our phases
    and which would stand between a fused op and what folds into it:
    - a view there and back (`view(view(t, [8, 16]), [2, 4, 16])` of a [2, 4, 16] t), as an
      in-place add on an N-D linear's output leaves between the add and a unary after it;
    - a same-shape view between an expand and a bmm or right after a bmm, as a linear on a
      non-contiguous 3-D input decomposes (patterns.linear_example, contiguous=False, traces
      without them).
    Nothing else moves, so the N-D linear forms (a real flatten and its inverse) still match."""
    dropped = 0
    view = aten.view.default
    for node in list(graph.nodes):
        if node.target is not view or not isinstance(node.args[0], torch.fx.Node):
            continue
        src = node.args[0]
        if src.target is view and len(src.users) == 1 and isinstance(src.args[0], torch.fx.Node):
            keep = src.args[0]  # a view there and back: both go
        elif src.target is aten.bmm.default or (src.target is aten.expand.default
                                               and all(u.target is aten.bmm.default for u in node.users)):
            keep = src
        else:
            continue
        vi, vo = val(keep), val(node)
        if vi is not None and vo is not None and same_dims(vi.shape, vo.shape):
            node.replace_all_uses_with(keep)
            graph.erase_node(node)
            if src is not keep and not src.users:
                graph.erase_node(src)
            dropped += 1
    return dropped


def _cast_and_view_steps(users: list) -> int:
    """1 for a bf16 cast every user starts with, 1 more for a view (an N-D linear's flatten) after it."""
    steps, level = 0, users
    for targets in ((prims.convert_element_type.default,), (aten.view.default, aten.reshape.default)):
        if level and all(u.target in targets for u in level):
            steps += 1
            level = [next(iter(u.users)) for u in level if len(u.users) == 1]
    return steps


def lift_conv1d(graph: torch.fx.Graph) -> int:
    """Each fused 1-D conv becomes the 2-D conv over height 1 the kernel runs it as:
    unsqueeze(x, 2) -> qconv (2-D geometry) -> squeeze(2). Exact; after our pass Inductor sees
    only 2-D int8 convs, whose output length torch's meta kernel computes right (for the 1-D
    form it reads the packed [O, I, 1, k] weight as a 2-D kernel: 22 instead of 21 for k=2, p=1
    over 20, and the next shape check failed the compile; fuzz corpus).

    The kernel writes its output channels-last; the fp32 conv it replaced wrote it contiguous,
    and the graph downstream was traced that way. Under dynamic shapes Inductor re-derives every
    value's strides from ours, and a later `view` failed the compile (fuzz corpus), so there the
    output is copied back to the traced layout. Static shapes keep the recorded strides.
    Returns the convs lifted."""
    lifted = 0
    for node in list(graph.nodes):
        f = record(node)
        if f is None or f.kind != "qconv" or len(f.geom.stride) != 1:
            continue
        x4 = call(graph, node, aten.unsqueeze.default, f.x, 2)
        y = call(graph, node, aten.squeeze.dim, emit_before(node, K.lift_1d(f, x4)), 2)
        v = val(y)
        if v is not None and not v.is_contiguous() and not all(isinstance(d, int) for d in v.shape):
            y = call(graph, node, aten.clone.default, y, memory_format=torch.contiguous_format)
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        lifted += 1
    return lifted


_VIEWS = (aten.view.default, aten._unsafe_view.default)


def views_after_convs_as_reshape(graph: torch.fx.Graph) -> int:
    """Every view downstream of a fused conv becomes `reshape` (the same values; a copy only where
    the strides allow no view). The kernel writes channels-last where the float conv it replaced
    was traced contiguous; when Inductor re-derives every value's strides from ours (it does for
    layout optimization, whenever a float conv is left in the graph) a view traced on the
    contiguous value failed the compile (fuzz sweep; tests/passes/test_layouts.py).
    Returns the views changed."""
    todo = [n for n in graph.nodes if (f := record(n)) is not None and f.kind == "qconv"]
    seen, changed = set(todo), 0
    while todo:
        for user in todo.pop().users:
            if user in seen:
                continue
            seen.add(user)
            todo.append(user)
            if user.target in _VIEWS:
                user.target = aten.reshape.default
                changed += 1
    return changed


def decompose_weight_dequants(graph: torch.fx.Graph) -> None:
    """A layer left unfused keeps `dequantize(w_int8)` in the graph, and constant folding never
    folds a dequantize (it keeps int8 weights int8 for the prepack): the fp32 fallback would
    dequantize its weight on every call. For layers refused only because int8 would saturate on
    this CPU (a whole 8-bit model on a CPU without VNNI), the same arithmetic as plain ATen ops
    folds into a frozen fp32 constant instead, so the fallback costs what an fp32 layer costs.
    Other refusals keep the runtime dequantize: some are geometries oneDNN's prepacked fp32
    conv would crash on too (an output window entirely in the padding)."""
    refused = {n for n in quantized_compute(graph) if why(n).why is Why.SATURATION}
    for node in list(graph.nodes):
        if (not is_weight_dq(node) or node.target is qd.dequantize_per_tensor.tensor
                or consumer(node) not in refused):
            continue
        a = args_of(node)
        out_dtype = a.get("out_dtype") or torch.float32
        if node.target is qd.dequantize_per_channel.default:
            # (w - zp) * scale, broadcast along `axis`: what quantized_decomposed computes
            shape = [1] * val(a["input"]).dim()
            shape[a["axis"]] = -1
            w = a["input"]
            if a["zero_points"] is not None:
                w = call(graph, node, aten.sub.Tensor, w, call(graph, node, aten.view.default, a["zero_points"], shape))
            w = call(graph, node, aten.mul.Tensor, w, call(graph, node, aten.view.default, a["scales"], shape))
            if out_dtype != torch.float32:
                w = call(graph, node, prims.convert_element_type.default, w, out_dtype)
        else:  # per tensor: (float(w) - zp) * scale
            w = call(graph, node, prims.convert_element_type.default, a["input"], out_dtype)
            w = call(graph, node, aten.mul.Tensor, call(graph, node, aten.sub.Tensor, w, a["zero_point"]), a["scale"])
        node.replace_all_uses_with(w)
        graph.erase_node(node)


def decompose_per_token_quant(graph: torch.fx.Graph) -> int:
    """choose_qparams_per_token, quantize_per_token and dequantize_per_token as the ATen ops their
    eager implementations run (same arithmetic, same order: abs -> amax over the last dim ->
    clamp(1e-5) -> / 127; x * (1 / s) + zp -> round -> clamp -> int8; (q - zp) * s). Inductor has
    no lowering for them and would call each as a Python op; as ATen ops they fuse into the kernels
    around them. Returns the ops replaced."""
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _PER_TOKEN:
            continue
        a = args_of(node)
        c = lambda op, *args: call(graph, node, op, *args)  # noqa: E731
        if node.target is qd.choose_qparams_per_token.default:
            if a["dtype"] != torch.int8 or any(u.target is not operator.getitem for u in node.users):
                continue
            amax = c(aten.amax.default, c(aten.abs.default, a["input"]), [-1], True)
            scales = c(aten.div.Tensor, c(aten.clamp_min.default, amax, 1e-5), 127)
            results = (scales, c(aten.mul.Tensor, scales, 0))  # zeros (a constructor has no lowering here)
            for user in list(node.users):
                user.replace_all_uses_with(results[user.args[1]])
                graph.erase_node(user)
        elif node.target is qd.quantize_per_token.default:
            y = c(aten.mul.Tensor, a["input"], c(aten.reciprocal.default, a["scales"]))
            y = c(aten.round.default, c(aten.add.Tensor, y, a["zero_points"]))
            y = c(aten.clamp_max.default, c(aten.clamp_min.default, y, a["quant_min"]), a["quant_max"])
            node.replace_all_uses_with(c(prims.convert_element_type.default, y, a["dtype"]))
        else:
            y = c(aten.mul.Tensor, c(aten.sub.Tensor, a["input"], a["zero_points"]), a["scales"])
            node.replace_all_uses_with(c(prims.convert_element_type.default, y, a["output_dtype"]))
        graph.erase_node(node)
        replaced += 1
    return replaced


_PER_TOKEN = (qd.choose_qparams_per_token.default, qd.quantize_per_token.default, qd.dequantize_per_token.default)


def merge_sibling_linears(graph: torch.fx.Graph) -> list:
    """Fused int8 linears that read the same quantized input with the same quantization and
    post-ops (a transformer's Q, K and V projections) become one linear over their concatenated
    weights, scales, zero points and biases, and each former output a slice of its result: one
    GEMM with N = the sum of theirs instead of several, and one call's fixed cost instead of
    several. The concatenation is of frozen constants and folds into one prepacked weight.
    Static shapes only (a slice of a symbolic width would need a guard). Returns the size of
    each group merged."""
    groups: dict = {}
    for node in graph.nodes:
        f = record(node)
        if f is None or f.kind != "qlinear" or f.binary is not None or not _mergeable_weight(f, node):
            continue
        key = (f.x, _qparams_key(f.xq), f.out, f.unary, f.bias is None)
        groups.setdefault(key, []).append(node)
    merged, constant = [], {}
    for nodes in groups.values():
        if len(nodes) > 1 and all(_constant(n, constant) for node in nodes for n in _weight_inputs(record(node))):
            for node in nodes[1:]:  # their weights' qparams may be computed after the first sibling
                for n in _weight_inputs(record(node)):
                    _hoist_before(nodes[0], n)
            _merge(graph, nodes)
            merged.append(len(nodes))
    return merged


@dataclasses.dataclass(frozen=True)
class _WeightOnlyCall:
    """Where a weight-only linear's arguments sit: `weights` are concatenated along dim 0 when
    siblings merge (the weight rows, their per-channel or per-group scales or group pairs, the
    bias; their shapes past dim 0 must agree), `same`
    must be equal across siblings (the row hint; the group size)."""
    op: object
    weights: tuple
    same: tuple
    bias: int


def _weight_only_calls() -> tuple:
    ops = torch.ops.iq_onednn
    return (_WeightOnlyCall(ops.woq_linear.default, weights=(1, 2, 3), same=(4,), bias=3),  # x, w, scale, bias, rows
            _WeightOnlyCall(ops.woq_int4_linear.default, weights=(1, 2, 4), same=(3,), bias=4))  # x, w4, pairs, group, bias


def merge_sibling_woq_linears(graph: torch.fx.Graph) -> list:
    """Weight-only linears (int8 `iq_onednn.woq_linear`, int4 `iq_onednn.woq_int4_linear`) that
    read the same input (up to dtype casts, which autocast makes per linear) with the same
    dtypes, row hint or group size (a decoder's Q, K and V; its gate and up projections) become
    one call over their concatenated weights, scales (or int4 group pairs) and biases, each
    former output a slice of its last dim. Both ops keep a channel's data in its own rows (dim 0),
    so a concatenation is the merged layer.
    A decode step streams the same weight bytes, in one call instead of several: one input
    conversion and one call's fixed cost. The weights are frozen constants, so the concatenation
    folds at freezing. The merged width is static; leading dims may be symbolic (the slices are of
    the last dim only). Returns the size of each group merged."""
    if not native.available():
        return []
    groups: dict = {}
    for kind in _weight_only_calls():
        for node in graph.find_nodes(op="call_function", target=kind.op):
            x, w = node.args[0], node.args[1]
            v, vw = val(node), val(w)
            if v is None or vw is None or has_symbolic(vw.shape):
                continue
            same = tuple(node.args[i] for i in kind.same)
            # a weight's, scale's (per channel or per group) and bias's shape past dim 0: equal to concatenate
            widths = tuple(None if (n := node.args[i]) is None or val(n) is None else tuple(val(n).shape[1:])
                           for i in kind.weights)
            key = (kind, _uncast(x), val(x).dtype, same, widths, v.dtype, node.args[kind.bias] is None)
            groups.setdefault(key, []).append(node)
    merged, constant = [], {}
    for (kind, *_), nodes in groups.items():
        inputs = [n for node in nodes for i in kind.weights if isinstance(n := node.args[i], torch.fx.Node)]
        if len(nodes) > 1 and all(_constant(n, constant) for n in inputs):
            for n in inputs:  # a later sibling's scale cast sits after the first sibling
                _hoist_before(nodes[0], n)
            _merge_weight_only(graph, kind, nodes)
            merged.append(len(nodes))
    return merged


def _uncast(node):
    """What a chain of dtype casts converts: under autocast each linear casts its input on its
    own, so siblings read different nodes that hold the same values."""
    while isinstance(node, torch.fx.Node) and node.target in (prims.convert_element_type.default,
                                                               aten._to_copy.default):
        node = node.args[0]
    return node


def _merge_weight_only(graph: torch.fx.Graph, kind: _WeightOnlyCall, nodes: list) -> None:
    first = nodes[0]
    args = list(first.args)
    for i in kind.weights:
        if args[i] is not None:
            args[i] = call(graph, first, aten.cat.default, [n.args[i] for n in nodes], 0)
    out = call(graph, first, kind.op, *args)
    _split_into(graph, out, nodes, [n.args[1] for n in nodes])


def _weight_inputs(f) -> list:
    return [n for n in (f.w.args[0], f.w_scale, f.w_zp, f.bias) if isinstance(n, torch.fx.Node)]


def _constant(node: torch.fx.Node, memo: dict) -> bool:
    """Made of graph inputs and constants only (the weights: parameters are inputs until
    freezing turns them into constants), through ops that can move up the graph. `memo` holds
    the answers so far (each node is decided once per merge pass)."""
    if node not in memo:
        memo[node] = node.op in ("get_attr", "placeholder") or (
            node.op == "call_function" and all(_constant(n, memo) for n in node.all_input_nodes))
    return memo[node]


def _hoist_before(anchor: torch.fx.Node, node: torch.fx.Node) -> None:
    """Move a constant-only node (and its inputs) before `anchor` if it comes after it."""
    if node.op != "call_function" or node < anchor:
        return
    for n in node.all_input_nodes:
        _hoist_before(anchor, n)
    anchor.prepend(node)


def _mergeable_weight(f, node) -> bool:
    v, w = val(node), f.w.args[0] if isinstance(f.w, torch.fx.Node) and f.w.args else None
    vw, vs, vz = (val(n) if isinstance(n, torch.fx.Node) else None for n in (w, f.w_scale, f.w_zp))
    return (f.w.target is K.QLINEAR_PREPACK and v is not None and not has_symbolic(v.shape)
            and all(t is not None and t.dim() >= 1 for t in (vw, vs, vz))
            and vs.numel() == vz.numel() == vw.shape[0])  # per-channel weight qparams


def _qparams_key(xq) -> tuple:
    return (xq.scale, xq.zero_point)  # Python scalars (static), or the same nodes (dynamic)


def _merge(graph: torch.fx.Graph, nodes: list) -> None:
    first = nodes[0]
    records = [record(n) for n in nodes]
    f = records[0]

    def cat(parts):
        return call(graph, first, aten.cat.default, list(parts), 0)

    weights = [r.w.args[0] for r in records]
    packed = K.qlinear_prepack(lambda op, args: call(graph, first, op, *args), cat(weights), f.w.args[1])
    bias = None if f.bias is None else cat(r.bias for r in records)
    merged = emit_before(first, dataclasses.replace(
        f, w=packed, w_scale=cat(r.w_scale for r in records), w_zp=cat(r.w_zp for r in records), bias=bias))
    _split_into(graph, merged, nodes, weights)


def _split_into(graph: torch.fx.Graph, merged: torch.fx.Node, nodes: list, weights: list) -> None:
    """Each merged node becomes its slice of `merged`'s last dim (its weight's rows), then goes."""
    first = nodes[0]
    last_dim, start, parts = val(first).dim() - 1, 0, []
    for w in weights:
        width = val(w).shape[0]
        parts.append(call(graph, first, aten.slice.Tensor, merged, last_dim, start, start + width))
        start += width
    for node, part in zip(nodes, parts):
        node.replace_all_uses_with(part)
        graph.erase_node(node)
