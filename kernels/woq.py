"""Weight-only int8 linears: float activations times an int8 weight with one scale per output
channel, run as ATen's `_weight_int8pack_mm` (fp32 in, fp32 out; vectorized on AVX2 and
AVX-512, and Inductor's C++ GEMM template has a micro-kernel for it under max-autotune).
The op takes a 2-D input; a linear on more dims is flattened to rows and viewed back.
"""

from __future__ import annotations

from typing import Callable

import torch

aten = torch.ops.aten
WEIGHT_INT8PACK_MM = aten._weight_int8pack_mm.default

Call = Callable[[object, tuple], object]  # (op, args) -> graph node or tensor


def linear(call: Call, x, x_dims: list, w, w_scale, bias):
    """x [..., K] (fp32) times the int8 [N, K] weight, each output channel times its fp32 scale,
    plus the bias. `x_dims`: the input's sizes, of which only the first may be symbolic."""
    n, k = w.meta["val"].shape if hasattr(w, "meta") else w.shape
    rows = call(aten.reshape.default, (x, [-1, k])) if len(x_dims) != 2 else x
    out = call(WEIGHT_INT8PACK_MM, (rows, w, w_scale))
    if bias is not None:
        out = call(aten.add.Tensor, (out, bias))
    if len(x_dims) != 2:
        out = call(aten.reshape.default, (out, [-1, *x_dims[1:-1], n]))
    return out
