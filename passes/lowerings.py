"""Changes to Inductor's lowering of ops our passes emit: an input is realized (held in a buffer
of its own) before the lowering reads it.

Two lowerings read an input as it comes and fail on an unrealized pointwise value (an assertion
on a `Pointwise`, torch 2.13-2.14): the extra input of `onednn.qlinear_pointwise.binary` (say
`sin(z)`; torch's own pattern lowering realized it first, ours call the registered lowering), and
the scales of `aten._weight_int8pack_mm` (the weight-only int8 linear: a frozen scale vector is
not a buffer yet when the lowering binds it). Installing wraps those lowerings to realize the
input first, and `undo()` puts the originals back. Realizing a value that already is a buffer
changes nothing. With it, `add` of any float extra input lowers (accumulators.add_builds), and a
requantize after it folds.
"""

from __future__ import annotations

import dataclasses

import torch

# (op overload path, position, name) of the input realized first: `other` of
# qlinear_pointwise.binary(qx, x_scale, x_zp, qw, w_scale, w_zp, other, ...) is `x2` in Inductor's
# lowering of it; `scales` of _weight_int8pack_mm(self, mat2, scales) is `scale` there
REALIZED_INPUTS = (
    (("onednn", "qlinear_pointwise", "binary"), 6, "x2"),
    (("onednn", "qlinear_pointwise", "binary_tensor"), 6, "x2"),
    (("aten", "_weight_int8pack_mm", "default"), 2, "scale"),
)


@dataclasses.dataclass
class WrappedLowerings:
    """The original lowerings, by op, while ours stand in for them."""

    originals: dict

    def undo(self) -> None:
        from torch._inductor import lowering

        for op, original in self.originals.items():
            lowering.lowerings[op] = original


def _overload(path: tuple):
    namespace, name, overload = path
    return getattr(getattr(getattr(torch.ops, namespace), name, None), overload, None)


def realize_inputs_first() -> WrappedLowerings:
    from torch._inductor import lowering

    originals = {}
    for path, position, name in REALIZED_INPUTS:
        op = _overload(path)
        original = lowering.lowerings.get(op) if op is not None else None
        if original is None:
            continue
        originals[op] = original
        lowering.lowerings[op] = _realizing(original, position, name)
    return WrappedLowerings(originals)


def _realizing(original, position: int, name: str):
    def lower(*args, **kwargs):
        value = args[position] if len(args) > position else kwargs.get(name)
        if hasattr(value, "realize"):
            value.realize()
        return original(*args, **kwargs)

    return lower
