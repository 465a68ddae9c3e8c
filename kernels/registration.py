"""Kernels torch 2.13 lacks or gets wrong for our ops, registered when our passes install.

Both change no numerics: they give the compile the right shapes.
"""

from __future__ import annotations

import warnings

import torch

from . import compat
from .onednn import PREPACKS, QCONV, packed_shape

_FAKE_LIB: list = []
_META_FIX: list = []


def register_fake_prepacks() -> None:
    """Fake (meta) kernels for the prepack ops, which torch 2.13 lacks (idempotent).

    Our prepack nodes sit in the graph through the freezing stage's fake-tensor propagation
    until constant folding evaluates them on the real int8 weights.
    """
    if _FAKE_LIB:
        return
    lib = torch.library.Library("onednn", "FRAGMENT")  # noqa: TOR901
    for op in PREPACKS:
        def fake(w, *args, _op=op, **kwargs):
            return w.new_empty(packed_shape(_op, w.shape))

        torch.library.register_fake(op, fake, lib=lib)
    _FAKE_LIB.append(lib)


def register_conv1d_meta_fix() -> bool:
    """A correct meta for 1-D onednn.qconv_pointwise (idempotent). False when this torch has no
    meta kernel to correct: the passes then leave 1-D convs unfused (`conv1d_fusable`).

    The packed 1-D weight is [O, I, 1, k] (the kernel runs 1-D as 2-D over height 1); torch's meta
    reads that as a 2-D kernel over the 1-D input and derives the length from the wrong kernel
    size, e.g. 22 instead of 21 for k=2, p=1 over 20. Any shape check downstream (a residual add,
    cat, a linear over the length, a permuted conv) then fails the compile. Ours computes the 1-D
    case the way the kernel does and defers everything else to torch's meta.
    """
    if _META_FIX:
        return True
    overloads = [getattr(QCONV, o) for o in ("default", "tensor")]
    torch_metas = [compat.meta_kernel(op) for op in overloads]
    if any(m is None for m in torch_metas):
        return False
    lib = torch.library.Library("onednn", "IMPL", "Meta")  # noqa: TOR901
    for op, torch_meta in zip(overloads, torch_metas):
        def meta(x, x_scale, x_zp, w, w_scale, w_zp, bias, stride, padding, dilation, *rest, _torch_meta=torch_meta):
            if x.dim() == 3 and w.dim() == 4:  # 1-D: as 2-D over height 1
                out = _torch_meta(x.unsqueeze(2), x_scale, x_zp, w, w_scale, w_zp, bias, [1, *stride], [0, *padding],
                                  [1, *dilation], *rest)
                return out.squeeze(2)
            return _torch_meta(x, x_scale, x_zp, w, w_scale, w_zp, bias, stride, padding, dilation, *rest)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": intended
            lib.impl(op, meta)
        compat.replace_python_meta(op, meta)
    _META_FIX.append(lib)
    return True


def conv1d_fusable() -> bool:
    return bool(_META_FIX)
