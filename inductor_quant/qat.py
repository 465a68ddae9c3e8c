"""QAT conv+bn: simulate the fold during training, fold for real at convert.

After annotation, each conv -> batch_norm pair is rewritten to (σ = sqrt(running_var + eps)):

    s   = gamma / σ
    y   = conv(x, fq(W * s), None) / s + b      # fake-quantized weight has BN folded in
    out = _native_batch_norm_legit(y, gamma, beta, mean, var, training, ...)[0]  # BN trainable

so the weight fake-quant sees the weight the deployed model will use, while batch_norm keeps
updating its statistics and gamma/beta keep their gradients. The weight's annotation moves
from edge (W, conv) to (W * s, conv); a bias annotation is dropped (the bias stays fp32).
`fold_qat_conv_bn` (called by convert) replaces the subgraph with conv(x, fq(W'), b').

Contract with quantizers: annotate conv's input x and weight on the conv node and the output
on the last node of the chain (bn, or the activation after bn); bn itself needs no input spec.
An output spec left on the conv itself is moved to the bn output (never observed mid-chain).
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from .bn_folding import conv_feeding, drop_counter_update, bn_params, folded_weight_bias, params_prefix
from .graph_utils import (
    BATCH_NORM_OPS,
    copy_meta,
    drop_attrs_if_unused,
    erase_dead,
    fetch_attr,
    new_attr,
    rekey_annotations,
)
from .quantizer.quantizer import ANNOTATION_KEY

aten = torch.ops.aten
QAT_RECORDS = "inductor_quant_qat_conv_bn"


def _call(gm: GraphModule, target, args, like: Node) -> Node:
    n = gm.graph.call_function(target, args)
    copy_meta(n, like)
    return n


def simulate_conv_bn_fold(gm: GraphModule) -> int:
    """Rewrite annotated conv -> bn pairs for QAT (see module docstring); returns the count."""
    records = gm.meta.setdefault(QAT_RECORDS, [])
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORM_OPS:
            continue
        found = conv_feeding(bn)
        if found is None or found[1] or bn_params(gm, bn) is None:
            continue  # conv_transpose + bn is not simulated in QAT; it stays unfused float
        conv = found[0]
        w, b = conv.args[1], (conv.args[2] if len(conv.args) > 2 else None)
        if not (isinstance(w, Node) and w.op == "get_attr" and isinstance(bn.args[1], Node)):
            continue
        nd = fetch_attr(gm, w.target).dim()
        gamma, var, eps = bn.args[1], bn.args[4], bn.args[7]
        with gm.graph.inserting_before(conv):
            std = _call(gm, aten.sqrt.default, (_call(gm, aten.add.Tensor, (var, eps), bn),), bn)
            s = _call(gm, aten.div.Tensor, (gamma, std), bn)
            scaled_w = _call(gm, aten.mul.Tensor, (w, _call(gm, aten.reshape.default, (s, [-1] + [1] * (nd - 1)), conv)), conv)
        with gm.graph.inserting_before(bn):
            y = _call(gm, aten.div.Tensor, (conv, _call(gm, aten.reshape.default, (s, [1, -1] + [1] * (nd - 2)), conv)), conv)
            if b is not None:
                y = _call(gm, aten.add.Tensor, (y, _call(gm, aten.reshape.default, (b, [1, -1] + [1] * (nd - 2)), conv)), conv)
        bn_out = _as_native_batch_norm(gm, bn, y)
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        args[1], args[2] = scaled_w, None
        conv.args = tuple(args)
        ann = conv.meta.get(ANNOTATION_KEY)
        if ann is not None:
            ann.input_qspec_map.pop(b, None)
            rekey_annotations(gm, w, scaled_w, consumer=conv)  # the weight edge is now (W * s, conv)
            if ann.output_qspec is not None and ANNOTATION_KEY not in bn_out.meta:
                # conv's output is now an intermediate; the deployed (folded) conv outputs bn's value
                bn_out.meta[ANNOTATION_KEY] = type(ann)(output_qspec=ann.output_qspec, _annotated=True)
                ann.output_qspec = None
        records.append({"conv": conv.name, "bn": bn_out.name, "y": y.name, "scaled_w": scaled_w.name,
                        "weight": w.target, "bias": b.target if b is not None else None})
    gm.graph.lint()
    gm.recompile()
    return len(records)


def _as_native_batch_norm(gm: GraphModule, bn: Node, y: Node) -> Node:
    """batch_norm(conv, ...) -> getitem(_native_batch_norm_legit(y, ...), 0).

    The QAT tutorial freezes BN statistics by setting args[5] (training) of
    `_native_batch_norm_legit` nodes; using that op makes its snippet work unchanged.
    """
    with gm.graph.inserting_before(bn):
        legit = _call(gm, aten._native_batch_norm_legit.default, (y,) + tuple(bn.args[1:8]), bn)
        out = _call(gm, operator.getitem, (legit, 0), bn)
    for key in (ANNOTATION_KEY, "val"):
        if key in bn.meta:
            out.meta[key] = bn.meta[key]
    bn.replace_all_uses_with(out)
    rekey_annotations(gm, bn, out)  # e.g. a residual add's input edge named the old bn
    gm.graph.erase_node(bn)
    return out


def fold_qat_conv_bn(gm: GraphModule) -> None:
    """At convert: conv(x, fq(W*s), None)/s + b -> bn  ==>  conv(x, fq(W'), b') with eval stats."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for rec in gm.meta.get(QAT_RECORDS, []):
        conv, bn, y, scaled_w = (nodes.get(rec[k]) for k in ("conv", "bn", "y", "scaled_w"))
        if any(n is None for n in (conv, bn, y, scaled_w)):
            continue
        weight = fetch_attr(gm, rec["weight"]).detach()
        bias = fetch_attr(gm, rec["bias"]).detach() if rec["bias"] else None
        params = bn_params(gm, bn.args[0])
        w2, b2 = folded_weight_bias(weight, bias, *params)
        with gm.graph.inserting_before(scaled_w):
            new_w = gm.graph.get_attr(new_attr(gm, f"{conv.name}_weight_folded", w2, param=True))
            new_b = gm.graph.get_attr(new_attr(gm, f"{conv.name}_bias_folded", b2, param=True))
        copy_meta(new_w, conv)
        copy_meta(new_b, conv)
        scaled_w.replace_all_uses_with(new_w)
        args = list(conv.args)
        args[2] = new_b
        conv.args = tuple(args)
        legit = bn.args[0]  # bn is getitem(_native_batch_norm_legit(y, ...), 0)
        bn_inputs = [a for a in legit.all_input_nodes if a is not y]
        bn.replace_all_uses_with(conv)
        old = [a.target for a in bn_inputs if a.op == "get_attr"] + [rec["weight"]] + ([rec["bias"]] if rec["bias"] else [])
        gm.graph.erase_node(bn)
        erase_dead(gm, [legit, y, scaled_w] + bn_inputs)
        drop_counter_update(gm, params_prefix(bn_inputs))
        drop_attrs_if_unused(gm, old)
    gm.meta[QAT_RECORDS] = []
    gm.graph.lint()
    gm.recompile()
