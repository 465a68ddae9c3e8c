"""The whole-graph rewrites that are not patterns: before the phases, a shared dequantize is
duplicated per user; after them, 1-D conv outputs get back the layout the graph was traced
with, and the weights of layers refused for saturation fold to fp32."""

from __future__ import annotations

import torch
import torch.fx

from .diagnostics import consumer, is_weight_dq, quantized_compute, why
from .fused import call, record
from .kernel_limits import SATURATION_TAG
from .match import DEQUANTS, args_of, val

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
prims = torch.ops.prims


def promote_dequant(graph: torch.fx.Graph) -> int:
    """dq(x) -> {a, b}  =>  dq(x) -> a, dq'(x) -> b, so each chain can fuse. Returns the copies made."""
    copies = 0
    for node in list(graph.nodes):
        if node.target in DEQUANTS and len(node.users) > 1:
            for user in list(node.users)[1:]:
                with graph.inserting_before(user):
                    copy = graph.node_copy(node)
                user.replace_input_with(node, copy)
                copies += 1
    return copies


def restore_conv1d_layout(graph: torch.fx.Graph) -> None:
    """The int8 1-D conv writes its output channels-last ([N, C, L] with strides (C*L, 1, C));
    the fp32 conv it replaced wrote it contiguous, and the graph downstream was traced that way
    (a `view` after a layer norm, say). Under dynamic shapes Inductor re-derives every value's
    strides from ours and such a view fails the compile (fuzzer finding, corpus repro), so the
    output is copied back to the traced layout. Static shapes keep the strides recorded at
    trace time and need no copy."""
    for node in list(graph.nodes):
        f, v = record(node), val(node)
        if (f is None or f.kind != "qconv" or len(f.geom.stride) != 1 or v is None or v.is_contiguous()
                or all(isinstance(d, int) for d in v.shape)):
            continue
        users = list(node.users)
        copy = call(graph, node.next, aten.clone.default, node, memory_format=torch.contiguous_format)
        for user in users:
            user.replace_input_with(node, copy)


def decompose_weight_dequants(graph: torch.fx.Graph) -> None:
    """A layer left unfused keeps `dequantize(w_int8)` in the graph, and constant folding never
    folds a dequantize (it keeps int8 weights int8 for the prepack): the fp32 fallback would
    dequantize its weight on every call. For layers refused only because int8 would saturate on
    this CPU (a whole 8-bit model on a CPU without VNNI), the same arithmetic as plain ATen ops
    folds into a frozen fp32 constant instead, so the fallback costs what an fp32 layer costs.
    Other refusals keep the runtime dequantize: some are geometries oneDNN's prepacked fp32
    conv would crash on too (an output window entirely in the padding)."""
    refused = {n for n in quantized_compute(graph) if SATURATION_TAG in why(n)}
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
