"""Observers of the LLM recipes: group-wise (int4) weights, per-token dynamic activations."""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver, PlaceholderObserver


class GroupwiseMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel min/max over groups of `group_size` consecutive input channels of a [out, in]
    weight: the weight seen as [out * in / group_size, group_size], one scale per row of that view
    (axis 0). convert_pt2e quantizes and dequantizes the weight in that view and views the result
    back (`group_size(mod)`), so the graph holds a per-channel dequantize the rest of the flow
    knows, and Inductor's constant folding keeps it (it folds no dequantize)."""

    def __init__(self, group_size: int = 128, **kwargs):
        kwargs.setdefault("ch_axis", 0)
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] % self.group_size:
            raise ValueError(
                f"group-wise weight quantization needs a 2-D [out, in] weight whose `in` is a multiple of "
                f"group_size={self.group_size}; got shape {tuple(x.shape)}. Fix: give this config only to "
                f"nn.Linear layers whose in_features divide by the group size, or pick another group size.")
        super().forward(x.detach().reshape(-1, self.group_size))
        return x


class PerTokenDynamicObserver(PlaceholderObserver):
    """Nothing to calibrate: each token (row over the last dimension) gets its own symmetric int8
    scale at run time. convert_pt2e emits choose_qparams_per_token -> quantize_per_token ->
    dequantize_per_token (`quantized_decomposed`); the compile runs such a linear as an int8 GEMM
    with the row scales applied to its output."""

    def __init__(self, **kwargs):
        kwargs["is_dynamic"] = True
        kwargs.setdefault("dtype", torch.int8)
        super().__init__(**kwargs)
