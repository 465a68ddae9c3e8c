"""How torch's int4 CPU GEMM is called (`aten._weight_int4pack_mm_for_cpu`, torch 2.13-2.14): the
weight packed two 4-bit values a byte, the group scales in the activation's dtype.

    _convert_weight_to_int4pack_for_cpu(w int32 [N, K] in [0, 15], inner_k_tiles) -> uint8 [N, K / 2]
    _weight_int4pack_mm_for_cpu(x [M, K] fp32|bf16, packed, group, scale_zeros [K / group, N, 2]) -> [M, N]

It computes x @ ((u - 8) * scale + zero)ᵀ per group of `group` input channels, so a symmetric int4
value q in [-8, 7] is stored as u = q + 8 with zero 0. Limits (checked by the op, probed on torch
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


def scale_zeros(call: Call, scale, n: int, k: int, group: int, dtype: torch.dtype):
    """Per-group scales [N * K / group] (one per row of the grouped view) -> [K / group, N, 2]
    (scale, zero 0) in `dtype`. The zeros come from the scales (times 0), not a constructor, so
    that constant folding folds them too."""
    s = call(aten.permute.default, (call(aten.view.default, (scale, [n, k // group])), [1, 0]))
    s = call(prims.convert_element_type.default, (s, dtype))
    s = call(aten.unsqueeze.default, (s, -1))
    return call(aten.cat.default, ([s, call(aten.mul.Tensor, (s, 0))], -1))


def mm(call: Call, x2d, packed, group: int, scale_zeros_):
    return call(MM, (x2d, packed, group, scale_zeros_))
