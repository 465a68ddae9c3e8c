"""How torch's int4 CPU GEMM is called (`aten._weight_int4pack_mm_for_cpu`, torch 2.13-2.14): the
weight packed two 4-bit values a byte, the group scales in the activation's dtype.

    _convert_weight_to_int4pack_for_cpu(w int32 [N, K] in [0, 15], inner_k_tiles) -> uint8 [N, K / 2]
    _weight_int4pack_mm_for_cpu(x [M, K] fp32|bf16, packed, group, scale_zeros [K / group, N, 2]) -> [M, N]

It computes x @ ((u - 8) * scale + zero)ᵀ per group of `group` input channels, so an int4 value
q in [-8, 7] with an integer zero point zp (PT2E's (q - zp) * scale) is stored as u = q + 8 with
zero = -zp * scale: 0 for symmetric weights, a per-group offset for asymmetric ones. Limits (checked by the op, probed on torch
2.13): group 32, 64, 128 or 256; N a multiple of 16. fp32 output is exact against the dequantized
weight; bf16 rounds the product (tests/kernels/test_int4pack.py).

Builders take a `call(op, args)` function (kernels/onednn.py's convention): the same code builds
FX nodes from frozen constants, which freezing folds (pack and scales computed once), or runs eagerly.
"""

from __future__ import annotations

import torch

from .onednn import Call

aten = torch.ops.aten
prims = torch.ops.prims

GROUPS = (32, 64, 128, 256)
N_MULTIPLE = 16
MM = aten._weight_int4pack_mm_for_cpu.default
PACK = aten._convert_weight_to_int4pack_for_cpu.default


def supports(n: int, k: int, group: int) -> bool:
    return group in GROUPS and k % group == 0 and n % N_MULTIPLE == 0


def pack(call: Call, w_grouped, n: int, k: int):
    """int8 q in [-8, 7] seen as [N * K / group, group] -> the op's packed uint8 [N, K / 2]."""
    w = call(prims.convert_element_type.default, (w_grouped, torch.int32))
    w = call(aten.add.Tensor, (call(aten.view.default, (w, [n, k])), 8))
    return call(PACK, (w, 1))


def scale_zeros(call: Call, scale, zero_point, n: int, k: int, group: int, dtype: torch.dtype,
                channels_first: bool = False):
    """Per-group scales and integer zero points [N * K / group] (one per row of the grouped view)
    -> [K / group, N, 2] of (scale, -zero_point * scale) in `dtype` (torch's op), or [N, K / group, 2]
    with `channels_first` (our `iq_onednn.woq_int4_linear`: a channel's groups beside its weight
    row), computed in fp32 from the two constants (no constructor), so that constant folding
    folds them too."""
    def per_group(t):
        t = call(aten.view.default, (call(prims.convert_element_type.default, (t, torch.float32)), [n, k // group]))
        return t if channels_first else call(aten.permute.default, (t, [1, 0]))

    s = per_group(scale)
    zero = call(aten.mul.Tensor, (call(aten.neg.default, (per_group(zero_point),)), s))
    pair = [call(aten.unsqueeze.default, (call(prims.convert_element_type.default, (t, dtype)), -1)) for t in (s, zero)]
    return call(aten.cat.default, (pair, -1))


def mm(call: Call, x2d, packed, group: int, scale_zeros_):
    return call(MM, (x2d, packed, group, scale_zeros_))
