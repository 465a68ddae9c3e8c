"""PTQ: fold batch_norm into the conv that feeds it, before the quantizer annotates.

    bn(conv(x, W, b)) == conv(x, W * g/σ, (b - μ) * g/σ + β),   σ = sqrt(running_var + eps)

Running statistics are used (eval semantics), whatever the bn's `training` flag says, as
upstream PT2E does. The folded weight/bias become new parameters; unused old ones are deleted.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .graph_utils import (
    BATCH_NORM_OPS,
    CONV_OPS,
    CONV_TRANSPOSE_OPS,
    copy_meta,
    drop_attrs_if_unused,
    erase_dead,
    fetch_attr,
    new_attr,
)


def bn_params(gm: GraphModule, bn: Node):
    """(gamma, beta, mean, var, eps) of a batch_norm node as tensors; None if not constants."""
    args = list(bn.args) + [None] * 9
    x, w, b, mean, var = args[:5]
    eps = args[7] if args[7] is not None else 1e-5
    if not all(isinstance(n, Node) and n.op == "get_attr" for n in (mean, var)):
        return None
    mean_t, var_t = fetch_attr(gm, mean.target), fetch_attr(gm, var.target)
    gamma = fetch_attr(gm, w.target) if isinstance(w, Node) else torch.ones_like(var_t)
    beta = fetch_attr(gm, b.target) if isinstance(b, Node) else torch.zeros_like(var_t)
    return gamma.detach(), beta.detach(), mean_t.detach(), var_t.detach(), float(eps)


def folded_weight_bias(weight, bias, gamma, beta, mean, var, eps, transpose=False):
    """The fold formula in the module docstring; transpose convs scale dim 1 (groups == 1 only)."""
    scale = gamma / torch.sqrt(var + eps)
    shape = [1, -1] if transpose else [-1]
    shape = shape + [1] * (weight.dim() - len(shape))
    w = weight * scale.reshape(shape)
    b = (bias if bias is not None else torch.zeros_like(mean)) - mean
    return w, b * scale + beta


def conv_feeding(bn: Node):
    conv = bn.args[0]
    if not isinstance(conv, Node) or conv.op != "call_function" or len(conv.users) != 1:
        return None
    if conv.target in CONV_OPS:
        return conv, False
    if conv.target in CONV_TRANSPOSE_OPS:
        groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
        return (conv, True) if groups == 1 else None
    return None


def fold_bn_into_conv(gm: GraphModule) -> int:
    """Fold every conv -> batch_norm pair in place; returns how many were folded."""
    folded = 0
    old_targets = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORM_OPS:
            continue
        found = conv_feeding(bn)
        params = bn_params(gm, bn)
        if found is None or params is None:
            continue
        conv, transpose = found
        w_node = conv.args[1]
        b_node = conv.args[2] if len(conv.args) > 2 else None
        if not (isinstance(w_node, Node) and w_node.op == "get_attr"):
            continue
        if b_node is not None and not (isinstance(b_node, Node) and b_node.op == "get_attr"):
            continue
        weight = fetch_attr(gm, w_node.target).detach()
        bias = fetch_attr(gm, b_node.target).detach() if b_node is not None else None
        w, b = folded_weight_bias(weight, bias, *params, transpose=transpose)
        with gm.graph.inserting_before(conv):
            new_w = gm.graph.get_attr(new_attr(gm, f"{conv.name}_weight_folded", w, param=True))
            new_b = gm.graph.get_attr(new_attr(gm, f"{conv.name}_bias_folded", b, param=True))
        for new, old in ((new_w, w_node), (new_b, b_node or w_node)):
            copy_meta(new, old)
            new.meta["val"] = (w if new is new_w else b)
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        args[1], args[2] = new_w, new_b
        conv.args = tuple(args)
        bn.replace_all_uses_with(conv)
        old_targets += [a.target for a in bn.all_input_nodes + conv.all_input_nodes if a.op == "get_attr"]
        old_targets += [w_node.target] + ([b_node.target] if b_node is not None else [])
        bn_inputs = [a for a in bn.all_input_nodes if a is not conv]
        gm.graph.erase_node(bn)
        erase_dead(gm, bn_inputs + [w_node] + ([b_node] if b_node is not None else []))
        drop_counter_update(gm, params_prefix(bn_inputs))
        folded += 1
    if folded:
        drop_attrs_if_unused(gm, old_targets)
        gm.graph.lint()
        gm.recompile()
    return folded


def params_prefix(bn_inputs) -> str | None:
    for n in bn_inputs:
        if n.op == "get_attr" and n.target.endswith("running_mean"):
            return n.target[: -len("running_mean")]
    return None


def drop_counter_update(gm: GraphModule, prefix: str | None) -> None:
    """Remove `num_batches_tracked += 1` of a folded bn (train-mode exports have it)."""
    if prefix is None:
        return
    for n in list(gm.graph.nodes):
        if (n.op == "call_function" and n.target == torch.ops.aten.add_.Tensor
                and isinstance(n.args[0], Node) and n.args[0].op == "get_attr"
                and n.args[0].target == prefix + "num_batches_tracked" and not n.users):
            counter = n.args[0]
            gm.graph.erase_node(n)
            erase_dead(gm, [counter])
