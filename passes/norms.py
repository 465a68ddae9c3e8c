"""A layer norm whose output is quantized for the next int8 layer becomes one call,
`iq_onednn.layer_norm_quant` (kernels/native.py): each row normalized and quantized while it is in
L1, the float output written only when something else reads it (a residual).

Why: Inductor's C++ code for the decomposed layer norm and the `quantize_per_tensor` after it walks
the tensor five times (sum, mean, variance, normalize, quantize; one `omp for` each): 145-210 us at
BERT-base bs8's 1024 x 768 on an AMD EPYC Zen 5 with two threads, ours 85 us (docs/ARCHITECTURE.md,
section 8). A transformer has two per block.

What it matches, on the graph as it is after our other rewrites (the decomposition torch's
`native_layer_norm` gets before our pass): `var_mean(x, [last], correction=0, keepdim=True)`,
`(x - mean) * rsqrt(var + eps)`, times a weight and plus a bias when the norm has them, then
`quantize_per_tensor` with scalar qparams to uint8 or int8; x float32, the weight and bias float32
of the normalized size; every intermediate read only inside the chain. Anything else (bf16 inputs,
a norm over several dims, a mean someone reads) stays Inductor's. Same conditions as our other
kernel calls (own_calls.in_use()): not for AOTInductor, not with the layer off.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch

from .fused import propagate_fake
from .match import ACT_Q, ACT_RANGE, val
from .stats import count_kernel

aten = torch.ops.aten
VAR_MEAN = aten.var_mean.correction


def _operands(node, target) -> Optional[tuple]:
    """(a, b) of a binary `target` call, else None."""
    if not isinstance(node, torch.fx.Node) or node.target is not target or len(node.args) != 2 or node.kwargs:
        return None
    return node.args


def _param(node, n: int) -> bool:
    """A float32 vector of the normalized size."""
    v = val(node) if isinstance(node, torch.fx.Node) else None
    return v is not None and v.dtype == torch.float32 and v.dim() == 1 and v.shape[0] == n


def _peel(node, target, n: int):
    """`node` = target(inner, p) or target(p, inner) for a parameter p read by it alone: (inner, p);
    else (node, None)."""
    ops = _operands(node, target)
    if ops is not None:
        for inner, p in (ops, ops[::-1]):
            if isinstance(inner, torch.fx.Node) and _param(p, n) and len(inner.users) == 1:
                return inner, p
    return node, None


class Norm:
    """One matched chain: its input, parameters, eps, the nodes it replaces (its output first)."""

    def __init__(self, x, weight, bias, eps, nodes):
        self.x, self.weight, self.bias, self.eps, self.nodes = x, weight, bias, eps, nodes


def _only_user(node, user) -> bool:
    return isinstance(node, torch.fx.Node) and list(node.users) == [user]


def match(out: torch.fx.Node) -> Optional[Norm]:
    """The layer norm ending at `out`, if `out` is one (see the module docstring)."""
    v = val(out)
    if v is None or v.dtype != torch.float32 or v.dim() < 1 or not isinstance(v.shape[-1], int):
        return None
    n = v.shape[-1]
    chain = [out]
    normed, bias = _peel(out, aten.add.Tensor, n)
    if bias is not None:
        chain.append(normed)
    normed_w, weight = _peel(normed, aten.mul.Tensor, n)
    if weight is not None:
        chain.append(normed_w)
    scaled = _operands(normed_w, aten.mul.Tensor)
    if scaled is None:
        return None
    sub, rsqrt = scaled if getattr(scaled[1], "target", None) is aten.rsqrt.default else scaled[::-1]
    centred = _operands(sub, aten.sub.Tensor)
    if centred is None or getattr(rsqrt, "target", None) is not aten.rsqrt.default:
        return None
    plus_eps = _operands(rsqrt.args[0], aten.add.Tensor)
    if plus_eps is None or not isinstance(plus_eps[1], float):
        return None
    x, mean = centred
    var = plus_eps[0]
    if not (_only_user(sub, normed_w) and _only_user(rsqrt, normed_w) and _only_user(rsqrt.args[0], rsqrt)
            and _only_user(mean, sub) and _only_user(var, rsqrt.args[0])):
        return None
    stats = mean.args[0]
    if (not all(g.target is operator.getitem for g in (mean, var)) or stats is not var.args[0]
            or (var.args[1], mean.args[1]) != (0, 1) or stats.target is not VAR_MEAN or len(stats.users) != 2):
        return None
    dims = stats.args[1] if len(stats.args) > 1 else stats.kwargs.get("dim")
    xv = val(x)
    if (stats.args[0] is not x or xv is None or xv.dtype != torch.float32 or xv.shape[-1] != n
            or list(dims or ()) not in ([-1], [xv.dim() - 1]) or stats.kwargs.get("correction") != 0
            or not stats.kwargs.get("keepdim")):
        return None
    chain += [sub, rsqrt, rsqrt.args[0], var, mean, stats]
    return Norm(x, weight, bias, plus_eps[1], chain)


def route(graph: torch.fx.Graph) -> int:
    """Each quantized layer norm replaced by `iq_onednn.layer_norm_quant`; how many."""
    routed = 0
    for q in list(graph.find_nodes(op="call_function", target=ACT_Q)):
        if q.graph is not graph or len(q.args) != 6 or q.kwargs:
            continue
        out, scale, zero_point, qmin, qmax, dtype = q.args
        if (not isinstance(out, torch.fx.Node) or dtype not in ACT_RANGE or not isinstance(scale, float)
                or not isinstance(zero_point, int) or isinstance(zero_point, bool)):
            continue
        norm = match(out)
        if norm is None:
            continue
        others = [u for u in out.users if u is not q]
        with graph.inserting_after(out):
            new = graph.call_function(torch.ops.iq_onednn.layer_norm_quant.default,
                                      (norm.x, norm.weight, norm.bias, norm.eps, scale, zero_point, qmin, qmax,
                                       dtype, bool(others)))
        with graph.inserting_after(new):
            quantized = graph.call_function(operator.getitem, (new, 1))
            y = graph.call_function(operator.getitem, (new, 0))
        propagate_fake(new)
        for node, item in ((y, 0), (quantized, 1)):
            node.meta["val"] = new.meta["val"][item]
        q.replace_all_uses_with(quantized)
        graph.erase_node(q)
        for user in others:
            user.replace_input_with(out, y)
        for node in norm.nodes:  # users before what they read
            graph.erase_node(node)
        count_kernel("layer_norm_quant")
        routed += 1
    return routed
