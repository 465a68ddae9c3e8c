"""The last step of a freezing compile when our own kernel calls are on: each fused 2-D int8
conv goes to `iq_onednn.qconv2d` (kernels/native.py), which builds the layer's oneDNN primitive
once instead of on every call, and each residual conv (oneDNN's `sum`) to `iq_onednn.qconv2d_sum_`,
which also writes over its accumulator instead of returning a copy. Fused int8 linears go to
`iq_onednn.qlinear`, residual ones with `sum` into a contiguous accumulator to
`iq_onednn.qlinear_sum_`, ones with `add` (a new output) to `iq_onednn.qlinear_add`. Same numbers
(bitwise, tests/kernels/test_native.py).

It runs after every other rewrite, so every decision before it is made on torch's op form; it
reads each conv's record from the node as it is (passes/fused.py). Left on torch's op: tensor
activation qparams, 3-D convs, and any compile for AOTInductor (a package must load without our
library). Under max-autotune a linear with many rows is left to Inductor's autotune (its C++ GEMM
template against torch's op); one with few rows comes here (`TEMPLATE_FROM_ROWS`), unless it adds
a residual (the template won those where measured: they keep the autotune).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Optional

import torch

from inductor_quant.kernels import native
from inductor_quant.kernels import onednn as K

from .fused import call, propagate_fake, record
from .kernel_limits import gemm_template_may_run
from .match import static_shape, val
from .stats import count_kernel


# Under max-autotune (template_options(); fast_options() on AMX), linears with fewer rows (batch x tokens) than this call our
# kernel; from it on, the autotune between the C++ GEMM template and torch's op keeps them. Measured
# with bf16 autocast, C++ wrapper (docs/ARCHITECTURE.md, section 8; AMX Xeon, 2 threads): BERT-base
# bs1 (128 rows) 11.9 -> 11.6 ms, ViT-B/16 bs1 (197 rows) 19.8 -> 18.4 ms with ours; BERT-base bs8
# (1024 rows) 70.7 -> 72.4 ms, so the template keeps those. A dynamic row count stays with the autotune.
TEMPLATE_FROM_ROWS = 256

# whether this compile calls our kernels (set by the pass for one graph: install.py); rules that
# have no torch op to fall back to (the weight-only int8 linear) read it
_IN_USE = contextvars.ContextVar("inductor_quant_own_kernels", default=False)


@contextlib.contextmanager
def in_this_compile(enabled: bool):
    token = _IN_USE.set(bool(enabled))
    try:
        yield
    finally:
        _IN_USE.reset(token)


def in_use() -> bool:
    return _IN_USE.get()


def _rows(x: torch.fx.Node) -> Optional[int]:
    shape = static_shape(x)
    return None if shape is None else math.prod(shape[:-1])


def takes_woq_int4(x: torch.fx.Node) -> bool:
    """Whether a weight-only int4 linear on input `x` calls our `iq_onednn.woq_int4_linear` rather
    than torch's int4 GEMM: when our kernels are on in this compile, unless the GEMM template's
    autotune may run for it (many or dynamic rows, as for the int8 linears above: its WOQ int4
    micro-kernels compete there)."""
    return in_use() and not (gemm_template_may_run() and (_rows(x) or TEMPLATE_FROM_ROWS) >= TEMPLATE_FROM_ROWS)


def routable(f) -> bool:
    if f is None or f.xq.is_tensor or not isinstance(f.w, torch.fx.Node):
        return False
    if f.kind == "qlinear":
        if gemm_template_may_run() and (_rows(f.x) or TEMPLATE_FROM_ROWS) >= TEMPLATE_FROM_ROWS:
            return False
        if f.w.target is not K.QLINEAR_PREPACK:
            return False
        if f.binary is None:
            return native.post_op_code(f.unary) is not None
        if _adds(f):
            # under the GEMM template's autotune a residual linear keeps it: the template beat
            # torch's op on the residual linears it was measured on (docs/ARCHITECTURE.md)
            return not gemm_template_may_run()
        # the accumulator is written as the [rows, out] output: contiguous
        return _sums_in_place(f) and val(f.other) is not None and val(f.other).is_contiguous()
    if len(f.geom.stride) != 2 or f.w.target is not K.QCONV_PREPACK:
        return False
    if f.binary is None:
        return native.post_op_code(f.unary) is not None
    return _sums_in_place(f)


def _adds(f) -> bool:
    """oneDNN's binary `add` of a float graph tensor, then a post-op we have: our `qlinear_add`."""
    b = f.binary
    return (b.name == "add" and b.alpha == 1.0 and isinstance(f.other, torch.fx.Node) and val(f.other) is not None
            and val(f.other).dtype in (torch.float32, torch.bfloat16) and native.post_op_code(b.unary) is not None)


def _sums_in_place(f) -> bool:
    """oneDNN's `sum` into a graph tensor with scalar qparams, then a post-op we have: our
    `qconv2d_sum_` / `qlinear_sum_` call."""
    b = f.binary
    return (b.name == "sum" and b.alpha == 1.0 and not b.other.is_tensor and isinstance(f.other, torch.fx.Node)
            and native.post_op_code(b.unary) is not None)


def _m_hint(prepack: torch.fx.Node) -> int:
    """The row count torch's linear prepack picks the weight layout for: a 2-D example input's."""
    x_shape = prepack.args[1] if len(prepack.args) > 1 else None
    return int(x_shape[0]) if isinstance(x_shape, (list, tuple)) and len(x_shape) == 2 else 1


def route(graph: torch.fx.Graph) -> int:
    """Fused convs and linears moved to our kernel calls (their prepack goes: ours packs at first call).
    A residual conv or linear writes over its accumulator, which the passes made private to it
    (accumulators.py, the same contract torch's op relies on), and its users read that."""
    routed = 0
    for node in list(graph.nodes):
        f = record(node)
        if not routable(f):
            continue
        prepack = f.w
        w = prepack.args[0]
        if f.kind == "qconv" and w.meta["val"].dim() == 3:  # a 1-D conv in its 2-D form (graph_rewrites.lift_conv1d): [O, I, 1, k]
            w = call(graph, node, torch.ops.aten.unsqueeze.default, w, 2)
        with graph.inserting_before(node):
            if f.kind == "qlinear" and f.binary is None:
                new = native.qlinear(graph.call_function, f, w, _m_hint(prepack))
            elif f.kind == "qlinear" and f.binary.name == "add":
                new = native.qlinear_add(graph.call_function, f, w, _m_hint(prepack))
            elif f.kind == "qlinear":
                native.qlinear_sum_(graph.call_function, f, w, _m_hint(prepack))
                new = f.other
            elif f.binary is None:
                new = native.qconv2d(graph.call_function, f, w)
            else:
                native.qconv2d_sum_(graph.call_function, f, w)
                new = f.other
        if new is not f.other:
            propagate_fake(new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if not prepack.users:
            graph.erase_node(prepack)
        count_kernel(("qlinear" if f.kind == "qlinear" else "qconv2d")
                     + ("" if f.binary is None else "_add" if f.binary.name == "add" else "_sum_"))
        routed += 1
    return routed
