"""Observers of the LLM recipes: group-wise (int4) weights, per-token dynamic activations."""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver, PlaceholderObserver


FP16_MAX = 65504.0


def fp16_up(scale: torch.Tensor) -> torch.Tensor:
    """Each fp32 scale raised to the nearest fp16 value at or above it (a scale beyond fp16's range
    kept): the weights then quantize on a grid never clipped and, in fp16's normal range (from
    2^-14; the configs' smallest scale is 2^-12), at most 2^-10 coarser; a kernel can read the
    scales as fp16, losing nothing."""
    half = scale.to(torch.float16)
    bits = half.view(torch.int16)
    up = torch.where(half.float() < scale, bits + 1, bits).view(torch.float16).float()
    return torch.where(scale <= FP16_MAX, up, scale)


class GroupwiseMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel min/max over groups of `group_size` consecutive input channels of a [out, in]
    weight: the weight seen as [out * in / group_size, group_size], one scale per row of that view
    (axis 0). convert_pt2e quantizes and dequantizes the weight in that view and views the result
    back (`group_size(mod)`), so the graph holds a per-channel dequantize the rest of the flow
    knows, and Inductor's constant folding keeps it (it folds no dequantize). `fp16_scales`: the
    scales rounded up to fp16 values (`fp16_up`), which the compiled kernel streams as fp16."""

    def __init__(self, group_size: int = 128, fp16_scales: bool = False, **kwargs):
        kwargs.setdefault("ch_axis", 0)
        super().__init__(**kwargs)
        self.group_size = int(group_size)
        self.fp16_scales = bool(fp16_scales)
        self.fitted = None  # (scale, zero point) per group, set by gptq(): the grid its weight was rounded to

    def fit_groups(self, groups: torch.Tensor):
        """(scale, zero point) of each row of `groups` [G, group_size], by this observer's rule."""
        return self._calculate_qparams(groups.amin(1), groups.amax(1))

    def calculate_qparams(self):
        if self.fitted is not None:
            return self.fitted
        scale, zero_point = super().calculate_qparams()
        return (fp16_up(scale) if self.fp16_scales else scale), zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] % self.group_size:
            raise ValueError(
                f"group-wise weight quantization needs a 2-D [out, in] weight whose `in` is a multiple of "
                f"group_size={self.group_size}; got shape {tuple(x.shape)}. Fix: give this config only to "
                f"nn.Linear layers whose in_features divide by the group size, or pick another group size.")
        super().forward(x.detach().reshape(-1, self.group_size))
        return x


class GroupwiseLeastSquaresObserver(GroupwiseMinMaxObserver):
    """Group-wise weights with a float offset per group, fitted to the weight rather than spanned
    over its min and max: w ~ (q - zp) * scale with q in [quant_min, quant_max] and zp a float.

    For each group, four starting ranges (its min and its max, each as is or shrunk by 10 %) give
    integer values q; for each, the scale and offset that minimize the group's squared error for
    those q (a 2-unknown least squares) are refitted twice, and the best candidate is kept (a
    5 x 5 grid of starts measured no better on Gemma-3-270M and took 5x longer: 62 s for its LM
    head). The offset stays within the range an integer zero point has ([quant_min, quant_max]), so
    every consumer of a zero point takes it. On Gemma-3-270M's 4-bit groups of 32 this cuts the
    weight-only int4 model's KL divergence from the float model by 40 % against the min/max fit
    with integer zero points (docs/PERFORMANCE.md, section 5b). Weights only: the fit reads the
    observed weight tensor itself (not a copy) when convert asks for the parameters."""

    float_zero_points = True
    SHRINK = (1.0, 0.9)  # of the group's min and of its max, each
    REFITS = 2
    CHUNK = 1 << 20  # groups fitted at a time (bounds the temporaries of a 262k x 640 LM head)

    def __init__(self, group_size: int = 128, **kwargs):
        kwargs.setdefault("qscheme", torch.per_channel_affine)
        super().__init__(group_size=group_size, **kwargs)
        if self.qscheme != torch.per_channel_affine:
            raise ValueError("a float offset per group is an affine scheme: qscheme=torch.per_channel_affine")
        self._weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x)
        self._weight = x.detach()  # a weight: every call sees the same tensor, fitted once at convert
        return x

    def fit_groups(self, groups: torch.Tensor):
        return self._fit(groups.float())

    @torch.no_grad()
    def calculate_qparams(self):
        if self.fitted is not None or self._weight is None:
            return super().calculate_qparams()
        grouped = self._weight.float().reshape(-1, self.group_size)
        fits = [self._fit(grouped[i:i + self.CHUNK]) for i in range(0, grouped.shape[0], self.CHUNK)]
        return torch.cat([f[0] for f in fits]), torch.cat([f[1] for f in fits])

    def _fit(self, w: torch.Tensor):
        """(scale, float zero point) per row of `w` [groups, group_size]."""
        levels = float(self.quant_max - self.quant_min)
        lo0, hi0 = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
        n = w.shape[1]
        sum_w = w.sum(1, keepdim=True)
        best = (torch.full_like(lo0, float("inf")), ((hi0 - lo0) / levels).clamp_min(self.eps), lo0)
        for a in self.SHRINK:
            for b in self.SHRINK:
                scale, low = ((hi0 * b - lo0 * a) / levels).clamp_min(self.eps), lo0 * a
                for _ in range(self.REFITS):
                    q = ((w - low) / scale).round_().clamp_(0, levels)
                    sum_q, sum_qq = q.sum(1, keepdim=True), (q * q).sum(1, keepdim=True)
                    sum_qw = (q * w).sum(1, keepdim=True)
                    det = n * sum_qq - sum_q * sum_q
                    fitted = (n * sum_qw - sum_q * sum_w) / det.clamp_min(1e-30)
                    ok = (det > 0) & (fitted >= self.eps)
                    scale = torch.where(ok, fitted, scale)
                    low = torch.where(ok, (sum_w - scale * sum_q) / n, low)
                    low = torch.minimum(torch.maximum(low, -levels * scale), torch.zeros_like(low))
                q = ((w - low) / scale).round_().clamp_(0, levels)
                err = (q * scale + low - w).square_().sum(1, keepdim=True)
                better = err < best[0]
                best = tuple(torch.where(better, new, old) for new, old in zip((err, scale, low), best))
        _, scale, low = best
        return scale.reshape(-1), (self.quant_min - low / scale).reshape(-1)


class PerTokenDynamicObserver(PlaceholderObserver):
    """Nothing to calibrate: each token (row over the last dimension) gets its own symmetric int8
    scale at run time. convert_pt2e emits choose_qparams_per_token -> quantize_per_token ->
    dequantize_per_token (`quantized_decomposed`); the compile runs such a linear as an int8 GEMM
    with the row scales applied to its output."""

    def __init__(self, **kwargs):
        kwargs["is_dynamic"] = True
        kwargs.setdefault("dtype", torch.int8)
        super().__init__(**kwargs)
