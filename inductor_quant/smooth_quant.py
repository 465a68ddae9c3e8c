"""SmoothQuant for the per-token dynamic int8 recipe: move activation outliers into the weights.

A linear's input often has a few channels far larger than the rest (LLM decoders, transformer
encoders); one int8 scale per token then spends its range on them and rounds the other channels
to a few levels. SmoothQuant divides each input channel j by s_j and multiplies the weight's
column j by s_j, an identity in float (x diag(1/s) . (W diag(s))^T = x W^T), with

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)      (calibrated max over the batches given)

so that activations and weights share the difficulty. Linears that read the same value (Q, K and
V) get one s from the largest weight column of all of them, so they still read one tensor (and
still merge into one GEMM). The 1/s goes where it costs nothing: into the affine weight and bias
of a LayerNorm whose output only those linears read (the usual place in a transformer), else a
multiply before the linears, which Inductor fuses into the per-token quantize kernel.

Run it on the exported model before `prepare_pt2e`:

    gm = torch.export.export(model, example).module()
    gm = smooth_quant(gm, calibration_batches, alpha=0.5)
    gm = prepare_pt2e(gm, quantizer)   # e.g. linears: get_x86_inductor_linear_dynamic_per_token_config()
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.fx import GraphModule, Interpreter, Node

from .graph_utils import fetch_attr, new_attr

aten = torch.ops.aten
LINEAR = aten.linear.default
LAYER_NORM = aten.layer_norm.default
MIN = 1e-5  # floor of both maxima: an all-zero channel keeps s finite


def smooth_quant(gm: GraphModule, calibration: Iterable, alpha: float = 0.5) -> GraphModule:
    """Smooth every group of linears that read one value (in place; returns `gm`). `calibration`:
    input tuples (or single tensors) as the model takes them; their per-channel maxima set s."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: SmoothQuant's migration strength is in [0, 1] (0.5 is the usual)")
    groups = _linear_groups(gm)
    if not groups:
        return gm
    x_max = _input_maxima(gm, list(groups), calibration)
    for source, linears in groups.items():
        w_max = torch.stack([_weight(gm, lin).abs().amax(0) for lin in linears]).amax(0).clamp_min(MIN)
        s = (x_max[source].clamp_min(MIN).pow(alpha) / w_max.pow(1 - alpha)).clamp_min(MIN)
        for lin in linears:
            _scale_weight_columns(gm, lin, s)
        if not _fold_into_layer_norm(gm, source, s):
            _divide_before(gm, source, linears, s)
    gm.graph.lint()
    gm.recompile()
    return gm


def _weight(gm: GraphModule, linear: Node) -> torch.Tensor:
    return fetch_attr(gm, linear.args[1].target)


def _linear_groups(gm: GraphModule) -> dict:
    """value -> the linears that read it, for linears on a float value with a constant 2-D weight."""
    groups: dict = {}
    for node in gm.graph.nodes:
        if (node.op == "call_function" and node.target is LINEAR and isinstance(node.args[0], Node)
                and isinstance(node.args[1], Node) and node.args[1].op == "get_attr"
                and _weight(gm, node).dim() == 2 and _weight(gm, node).is_floating_point()):
            groups.setdefault(node.args[0], []).append(node)
    # a weight read by a linear outside the group (a Linear called twice on other inputs) would be
    # scaled for both: leave such groups alone
    readers: dict = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            readers[node.target] = readers.get(node.target, 0) + len(node.users)
    return {src: lins for src, lins in groups.items() if all(readers[lin.args[1].target] == 1 for lin in lins)}


def _input_maxima(gm: GraphModule, sources: list, calibration: Iterable) -> dict:
    """value -> max |x| per last-dim channel over every calibration batch."""
    maxima: dict = {}
    wanted = set(sources)

    class Recorder(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted and isinstance(out, torch.Tensor):
                m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).float()
                maxima[n] = m if n not in maxima else torch.maximum(maxima[n], m)
            return out

    seen = 0
    with torch.no_grad():
        for batch in calibration:
            Recorder(gm).run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
            seen += 1
    if not seen:
        raise ValueError("smooth_quant needs at least one calibration batch (the channel maxima set s)")
    if not torch.isfinite(torch.cat([m for m in maxima.values()])).all():
        raise ValueError("smooth_quant saw NaN or inf in a linear's input: check the model and the calibration data")
    return maxima


def _scale_weight_columns(gm: GraphModule, linear: Node, s: torch.Tensor) -> None:
    w = _weight(gm, linear)
    with torch.no_grad():
        scaled = (w.float() * s).to(w.dtype)
    linear.args = (linear.args[0], _constant(gm, linear, f"{linear.args[1].target}_smoothed", scaled), *linear.args[2:])


def _fold_into_layer_norm(gm: GraphModule, source: Node, s: torch.Tensor) -> bool:
    """LayerNorm(x) * gamma + beta, read only by the group: gamma / s, beta / s (exact in float)."""
    if not (source.op == "call_function" and source.target is LAYER_NORM and len(source.args) >= 3
            and all(u.target is LINEAR for u in source.users)):
        return False
    gamma, beta = source.args[2], source.args[3] if len(source.args) > 3 else None
    if not isinstance(gamma, Node) or gamma.op != "get_attr" or len(gamma.users) != 1:
        return False
    if beta is not None and (not isinstance(beta, Node) or beta.op != "get_attr" or len(beta.users) != 1):
        return False
    args = list(source.args)
    args[2] = _constant(gm, source, f"{gamma.target}_smoothed", fetch_attr(gm, gamma.target).detach() / s)
    if beta is not None:
        args[3] = _constant(gm, source, f"{beta.target}_smoothed", fetch_attr(gm, beta.target).detach() / s)
    source.args = tuple(args)
    return True


def _divide_before(gm: GraphModule, source: Node, linears: list, s: torch.Tensor) -> None:
    """x * (1 / s), one node the group's linears read."""
    inv = _constant(gm, linears[0], f"smooth_quant_inv_scale_{source.name}", 1.0 / s)
    with gm.graph.inserting_before(linears[0]):
        scaled = gm.graph.call_function(aten.mul.Tensor, (source, inv))
    for lin in linears:
        lin.replace_input_with(source, scaled)


def _constant(gm: GraphModule, anchor: Node, name: str, value: torch.Tensor) -> Node:
    with gm.graph.inserting_before(anchor):
        return gm.graph.get_attr(new_attr(gm, name.replace(".", "_"), value))


__all__ = ["smooth_quant"]
