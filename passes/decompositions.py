"""Inductor decompositions that disagree with eager quantized_decomposed ops, replaced while we
are installed (and put back by uninstall).

choose_qparams.tensor (dynamic quantization's runtime qparams): eager widens the range to
include zero, as every observer does; torch 2.13's Inductor decomposition uses [min, max] as is.
For a tensor that is all positive (after softmax, sigmoid, a shifted ReLU) or all negative the
compiled scale is then too small and its zero point clamps, so the largest values saturate
(found by the differential fuzzer: 0.63 came out as 0.54). Ours computes what eager computes.
"""

from __future__ import annotations

import torch

from inductor_quant.kernels import compat

qd = torch.ops.quantized_decomposed


def choose_qparams_tensor(input: torch.Tensor, quant_min: int, quant_max: int, eps: float, dtype: torch.dtype):
    """Per-tensor affine qparams of `input` over a range that contains zero (eager's arithmetic)."""
    min_val, max_val = torch.aminmax(input)
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    scale = torch.max((hi - lo) / float(quant_max - quant_min), torch.tensor([eps], dtype=torch.float32))
    zero_point = torch.clamp(quant_min - torch.round(lo / scale).to(torch.int), quant_min, quant_max)
    return scale.to(torch.float64), zero_point.to(torch.int64)


OURS = {qd.choose_qparams.tensor: choose_qparams_tensor}
_ABSENT = object()


def install() -> list:
    """Put ours into Inductor's tables; returns what was there, for `uninstall` (the installation
    keeps it: no state lives here)."""
    saved = []
    for table in compat.decomposition_tables():
        for op, fn in OURS.items():
            saved.append((table, op, table.get(op, _ABSENT)))
            table[op] = fn
    return saved


def uninstall(saved: list) -> None:
    """Put back exactly what `install` found (an entry that was absent is removed again)."""
    for table, op, before in reversed(saved):
        if before is _ABSENT:
            table.pop(op, None)
        else:
            table[op] = before
