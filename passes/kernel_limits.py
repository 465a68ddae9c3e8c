"""Where the int8 oneDNN conv/linear would compute something other than the Q/DQ model, or crash.

Each `check_*` returns None when the layer may fuse, else the reason it stays
dequantize -> fp32 -> quantize (reported by `stats()["unfused"]`). The conv checks run in the
order `check_conv_kernel` lists them: saturation last, so a layer refused only for saturation
has a geometry oneDNN's fp32 conv takes too (graph_rewrites.decompose_weight_dequants relies
on this).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx

from inductor_quant.kernels import cpu, probe
from inductor_quant.kernels import onednn as K
from inductor_quant.kernels.onednn import ConvGeometry

from .reasons import Reason, Why
from .match import args_of, has_symbolic, val

qd = torch.ops.quantized_decomposed

# --- saturation on CPUs without VNNI (kernels/cpu.py) ---------------------------------------

SATURATION_WARNING = (
    "inductor_quant: this model was quantized with 8-bit activations and 8-bit weights, but oneDNN on "
    "this CPU ({isa}) adds pairs of int8 products in int16 and would saturate (wrong results), so those "
    "quantized conv/linear layers stay in fp32 (exact, slower; `inductor_quant.passes.stats()` lists them). "
    "Fix: quantize with get_default_x86_inductor_quantization_config() (reduce_range='auto' picks 7-bit "
    "weights on this CPU), or reduce_range=True (7-bit activations)."
)


def act_raw_max(dq_node: torch.fx.Node) -> int:
    """Largest raw uint8 value the kernel multiplies: int8 activations are shifted by +128 first
    (by us for conv, by oneDNN for linear)."""
    a = args_of(dq_node)
    return int(a["quant_max"]) + (128 if a["dtype"] == torch.int8 else 0)


def weight_absmax(w_dq: torch.fx.Node) -> int:
    a = args_of(w_dq)
    return max(abs(int(a["quant_min"])), abs(int(a["quant_max"])))


def check_int8_exact(act_dq: torch.fx.Node, w_dq: torch.fx.Node) -> Optional[Reason]:
    """The fused kernel must compute what the eager Q/DQ model computes on this CPU: without
    VNNI, only activations and weights whose pair sums fit int16. (The installation warns once
    per process when a compile left layers in fp32 for this reason: SATURATION_WARNING.)"""
    if cpu.fuses_exactly(act_raw_max(act_dq), weight_absmax(w_dq)):
        return None
    return Why.SATURATION(isa=cpu.cpu_info().isa())


# --- conv geometry ---------------------------------------------------------------------------


def geometry(conv: torch.fx.Node) -> ConvGeometry:
    a = args_of(conv)
    return ConvGeometry(tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])


def check_conv_kernel(conv: torch.fx.Node, act_dq: torch.fx.Node, w_dq: torch.fx.Node) -> Optional[Reason]:
    return (_check_dynamic_layout(conv) or _check_window_in_padding(conv)
            or _check_known_wrong_results(conv, act_dq, w_dq) or check_int8_exact(act_dq, w_dq))


def _check_dynamic_layout(conv: torch.fx.Node) -> Optional[Reason]:
    """Under dynamic shapes Inductor's conv lowering expects a contiguous output when the input is
    both contiguous and channels-last (1 channel, or 1 pixel), assuming an unpacked weight; the
    prepacked int8 kernel writes channels-last, so the compiled code would fail its stride check."""
    x, out = val(conv.args[0]), val(conv)
    if x is None or out is None or all(isinstance(d, int) for d in out.shape):
        return None
    spatial = 1
    for d in x.shape[2:]:
        spatial *= d
    if any(isinstance(v, int) and v == 1 for v in (x.shape[1], spatial)):
        return Why.DYNAMIC_LAYOUT()
    return None


def _check_known_wrong_results(conv: torch.fx.Node, act_dq: torch.fx.Node, w_dq: torch.fx.Node) -> Optional[Reason]:
    """torch 2.13's int8 oneDNN conv returns wrong values for some strided convs with output width
    1 and for conv3d over depth 1 with a deeper kernel (differential fuzzer findings, corpus repros
    in tests/fuzz/corpus). Convs of those classes are fused only if the kernel, run once on this
    geometry, matches the reference (kernels/probe.py)."""
    x, w, out = val(conv.args[0]), val(conv.args[1]), val(conv)
    if x is None or w is None or out is None:
        return None
    geom = geometry(conv)
    suspect = (_is(out.shape[-1], 1) and any(s > 1 for s in geom.stride)) or (
        x.dim() == 5 and _is(x.shape[2], 1) and w.shape[2] > 1)
    if not suspect:
        return None
    if has_symbolic(x.shape[1:]):
        return Why.SUSPECT_SYMBOLIC()
    shape = (1, *(int(d) for d in x.shape[1:]))  # the probe runs batch 1; the batch may be symbolic
    act_max, w_max = act_raw_max(act_dq), min(127, weight_absmax(w_dq))
    if not cpu.fuses_exactly(act_max, w_max):  # the probe looks for geometry bugs, not saturation
        act_max = 127
    if not probe.qconv_is_exact(shape, tuple(w.shape), geom, act_max, w_max):
        return Why.KERNEL_WRONG()
    return None


def _check_window_in_padding(conv: torch.fx.Node) -> Optional[Reason]:
    """The oneDNN conv (int8 and bf16, eager too) segfaults when some output window lies entirely
    in the padding, e.g. input height 1, padding 3, dilation 2 (fuzzer finding, corpus repro)."""
    x, w = val(conv.args[0]), val(conv.args[1])
    if x is None or w is None:
        return None
    g = geometry(conv)
    if any(_window_misses_input(*dim) for dim in zip(x.shape[2:], w.shape[2:], g.stride, g.padding, g.dilation)):
        return Why.WINDOW_IN_PADDING()
    return None


def _window_misses_input(size, kernel: int, stride: int, pad: int, dilation: int) -> bool:
    """Along one dim: does some output position read only padding?"""
    if not pad or not isinstance(size, int):
        return False
    n_out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return any(all(not 0 <= o * stride - pad + j * dilation < size for j in range(kernel)) for o in range(n_out))


def _is(dim, value: int) -> bool:
    return isinstance(dim, int) and dim == value


# --- Inductor's C++ GEMM template (max-autotune) --------------------------------------------


def gemm_template_may_run() -> bool:
    """Whether Inductor may lower our qlinear through its C++ GEMM template (max-autotune with
    the CPP backend). Under it a linear's in-place `sum` comes out wrong on torch 2.13 and 2.14
    even into a tensor no later op reads (the template writes it through a view its scheduling
    does not order after the other readers: two post-norm layers with Q, K, V as three GEMMs,
    SQNR -3 dB; tests/passes/test_gemm_template.py pins it), so under it a linear's residual add
    is emitted as `add`, into a new output (passes/accumulators.py)."""
    from torch._inductor import config

    backends = {b.strip().upper() for b in str(config.max_autotune_gemm_backends).split(",")}
    return bool(config.max_autotune or config.max_autotune_gemm) and "CPP" in backends


def check_template_weight_reuse(w: torch.fx.Node) -> Optional[Reason]:
    """Under the C++ GEMM template an int8 weight that several linears read is not fused: a
    quantized Linear called twice failed to compile under max-autotune (torch 2.13-2.14), with
    both calls fused (the template re-packs the frozen packed weight for its micro-kernel and
    prunes the original, which the second lowering then misses) and with one of them fused
    (the packed weight again missing at the fused one's lowering). They stay dq -> fp32 linear
    (reported)."""
    if gemm_template_may_run() and len(_weight_readers(w)) > 1:
        return Why.TEMPLATE_SHARED_WEIGHT()
    return None


def _weight_readers(w: torch.fx.Node) -> list:
    """The ops that read `w` through its dequantizes (and their copies), or pack it."""
    readers, todo = [], list(w.users)
    while todo:
        n = todo.pop()
        if n.target in (qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default):
            todo += list(n.users)
        else:
            readers.append(n)
    return readers
