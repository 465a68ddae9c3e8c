"""Two changes to Inductor's lowerings while our passes are installed, each undone by `undo()`:
the fused int8 linear with a binary post-op realizes its extra input first (below), and a bmm with
a dynamic second operand keeps off the C++ GEMM template under max-autotune (at the end).

Inductor's `onednn.qlinear_pointwise.binary` lowering reads the extra input as it comes; when
that is an unrealized pointwise value (say `sin(z)`), the compile fails (an assertion on a
`Pointwise`, torch 2.13-2.14). torch's own pattern lowering realized it first; ours call the
registered lowering, so installing wraps that lowering to do the same, and `undo()` puts the
original back. Realizing a value that already is a buffer changes nothing. With it, `add` of any
float extra input lowers (accumulators.add_builds), and a requantize after it folds.
"""

from __future__ import annotations

import dataclasses

import torch

# the extra input: `other` in qlinear_pointwise.binary(qx, x_scale, x_zp, qw, w_scale, w_zp, other, ...),
# `x2` in Inductor's lowering of it
EXTRA_INPUT = 6
BINARY_LINEAR = ("binary", "binary_tensor")


@dataclasses.dataclass
class WrappedLowerings:
    """The original lowerings, by op, while ours stand in for them."""

    originals: dict

    def undo(self) -> None:
        from torch._inductor import lowering

        for op, original in self.originals.items():
            lowering.lowerings[op] = original


def realize_binary_extra_inputs() -> WrappedLowerings:
    from torch._inductor import lowering

    originals = {}
    for name in BINARY_LINEAR:
        op = getattr(torch.ops.onednn.qlinear_pointwise, name, None)
        original = lowering.lowerings.get(op) if op is not None else None
        if original is None:
            continue
        originals[op] = original
        lowering.lowerings[op] = _realizing(original)
    return WrappedLowerings(originals)


def _realizing(original):
    def lower(*args, **kwargs):
        extra = args[EXTRA_INPUT] if len(args) > EXTRA_INPUT else kwargs.get("x2")
        if hasattr(extra, "realize"):
            extra.realize()
        return original(*args, **kwargs)

    return lower


# --- dynamic-batch bmm under max-autotune: no C++ GEMM template (torch 2.13-2.14) -------------
#
# While max-autotune times the C++ bmm template, the template's input preprocessor
# (`CppGemmTemplate.add_choices`, `normalize_shapes`) overwrites the second operand's symbolic sizes
# with their example values in place, in the layout object the other choices share. When ATen's bmm
# then wins the timing, the C++ wrapper calls it with that operand at the example batch, and any
# other batch fails at run time (`aoti_torch_cpu_bmm_out ... API call failed`; fuzz sweep of the
# attention rule: Q·Kᵀ of dequantized Q and K under upstream's recipe, `fast_options()` and a
# dynamic batch). Which choice wins depends on timing, so the crash came and went. While installed,
# a bmm whose second operand has a symbolic size is lowered with ATen as its only backend: nothing
# is timed, nothing overwritten. Static bmm, and every mm (the int8 linear templates), keep the template.

def keep_dynamic_bmm_on_aten() -> WrappedLowerings:
    from torch._inductor import lowering

    originals = {}
    for op in (torch.ops.aten.bmm, torch.ops.aten.bmm.default):
        original = lowering.lowerings.get(op)
        if original is not None:
            originals[op] = original
            lowering.lowerings[op] = _aten_if_dynamic(original)
    return WrappedLowerings(originals)


def _aten_if_dynamic(original):
    def lower(mat1, mat2, *args, **kwargs):
        from torch._inductor import config
        from torch._inductor.utils import has_free_symbols

        backends = [b.strip() for b in str(config.max_autotune_gemm_backends).split(",") if b.strip()]
        size = mat2.get_size() if hasattr(mat2, "get_size") else ()
        if "CPP" in (b.upper() for b in backends) and has_free_symbols(size):
            with config.patch(max_autotune_gemm_backends="ATEN"):
                return original(mat1, mat2, *args, **kwargs)
        return original(mat1, mat2, *args, **kwargs)

    return lower
