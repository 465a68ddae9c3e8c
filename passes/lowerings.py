"""One change to Inductor's lowering of the fused int8 linear with a binary post-op: its extra
input is realized (held in a buffer of its own) before the lowering reads it.

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
