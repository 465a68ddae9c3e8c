"""The last step of a freezing compile when our own kernel calls are on: each fused int8 conv
that torch's op would run goes to `iq_onednn.qconv2d` (kernels/native.py), which builds the layer's
oneDNN primitive once instead of on every call. Same numbers (bitwise, tests/kernels/test_native.py).

It runs after every other rewrite, so every decision before it is made on torch's op form; it
reads each conv's record from the node as it is (passes/fused.py). Not routed, and left on
torch's op: convs with a binary post-op (the in-place sum), tensor activation qparams, and any
compile for AOTInductor (a package must load without our library).
"""

from __future__ import annotations

import torch

from inductor_quant.kernels import native
from inductor_quant.kernels import onednn as K

from .fused import call, propagate_fake, record
from .stats import count


def routable(f) -> bool:
    return (f is not None and f.kind == "qconv" and f.binary is None and not f.xq.is_tensor
            and len(f.geom.stride) == 2 and isinstance(f.w, torch.fx.Node) and f.w.target is K.QCONV_PREPACK
            and f.unary.name in native.POST_OPS)


def route_convs(graph: torch.fx.Graph) -> int:
    """Fused convs moved to our kernel calls (their prepack goes: ours packs at first call)."""
    routed = 0
    for node in list(graph.nodes):
        f = record(node)
        if not routable(f):
            continue
        prepack = f.w
        w = prepack.args[0]
        if w.meta["val"].dim() == 3:  # a 1-D conv in its 2-D form (graph_rewrites.lift_conv1d): [O, I, 1, k]
            w = call(graph, node, torch.ops.aten.unsqueeze.default, w, 2)
        with graph.inserting_before(node):
            new = native.qconv2d(graph.call_function, f, w)
        propagate_fake(new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if not prepack.users:
            graph.erase_node(prepack)
        count("kernel.own.qconv2d")
        routed += 1
    return routed
