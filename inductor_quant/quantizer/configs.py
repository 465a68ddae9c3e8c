"""Quantization configs from cached factories.

Each factory returns the *same* `QuantizationConfig` object for the same arguments
(`functools.lru_cache`), so configs compare and hash cheaply and a model mixing, say,
static and dynamic layers holds exactly two config objects.

- `get_default_x86_inductor_quantization_config`: what oneDNN int8 wants —
  uint8 asymmetric per-tensor activations, int8 symmetric per-channel weights (axis 0).
- `get_x86_inductor_linear_dynamic_fp16_config`: fp16 weights, float activations (no
  quantization of activations at all: half the weight bytes, fp32 math); linear only.
- `get_x86_inductor_linear_weight_only_int8_config`: int8 weights (per output channel, or per group),
  float activations: the weight-only recipe of LLM decoders (a quarter of the weight bytes).
- `get_x86_inductor_linear_weight_only_int4_config`: 4-bit weights, one scale per group of
  input channels, float activations (an eighth of the weight bytes).
- `get_x86_inductor_linear_dynamic_per_token_config`: int8 activations with one run-time scale
  per token, int8 weights per channel, float outputs.
- `get_symmetric_quantization_config`: the XNNPACK-style generic recipe the PT2E
  tutorials use — int8 symmetric-range activations, int8 weights (per-tensor by default).

Dynamic configs set `input_activation.is_dynamic=True` and leave `output_activation`
None: the activation scale is computed at run time and the output stays float.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch
from torch.ao.quantization.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)

from inductor_quant.kernels import int4pack
from inductor_quant.kernels.cpu import cpu_info

from .llm_observers import GroupwiseLeastSquaresObserver, GroupwiseMinMaxObserver, PerTokenDynamicObserver
from .quantizer import QuantizationConfig, QuantizationSpec

__all__ = [
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "get_x86_inductor_linear_weight_only_int8_config",
    "get_x86_inductor_linear_weight_only_int4_config",
    "get_x86_inductor_linear_dynamic_per_token_config",
    "get_symmetric_quantization_config",
    "is_dynamic_config",
]

# Smallest scale an observer may produce: keeps all-zero channels / constant activations finite.
_EPS = 2**-12


# Constructors are cached too, so equal recipes give *equal* specs across configs (prepare
# shares an observer implicitly only between equal specs).
@functools.lru_cache(maxsize=None)
def _activation_ctr(is_qat: bool, is_dynamic: bool):
    if is_dynamic:
        # Dynamic: nothing is calibrated. QAT still fake-quantizes each batch with its own range
        # (averaging_constant=1: a dynamic observer must not average across batches).
        if is_qat:
            return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1), eps=_EPS)
        return PlaceholderObserver
    if is_qat:
        return FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=_EPS)
    return HistogramObserver.with_args(eps=_EPS)


@functools.lru_cache(maxsize=None)
def _weight_ctr(is_qat: bool, per_channel: bool):
    if is_qat:
        observer = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        return FusedMovingAvgObsFakeQuantize.with_args(observer=observer, eps=_EPS)
    return (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(eps=_EPS)


def _config(act: QuantizationSpec, weight: QuantizationSpec, is_qat: bool) -> QuantizationConfig:
    output = None if act.is_dynamic else act
    return QuantizationConfig(input_activation=act, output_activation=output, weight=weight, bias=None, is_qat=is_qat)


def get_default_x86_inductor_quantization_config(
    is_qat: bool = False, is_dynamic: bool = False, reduce_range: Union[bool, str] = "auto"
) -> QuantizationConfig:
    """The X86/oneDNN recipe.

    activations: uint8, per-tensor affine, [0, 255] ([0, 127] with `reduce_range=True`);
    HistogramObserver (PTQ), FusedMovingAvgObsFakeQuantize (QAT), or `is_dynamic=True` with a
    PlaceholderObserver (runtime scale via choose_qparams).
    weights: int8, per-channel symmetric on axis 0, [-128, 127]; PerChannelMinMaxObserver
    (PTQ) or FusedMovingAvgObsFakeQuantize over MovingAveragePerChannelMinMaxObserver (QAT).
    bias: None (stays fp32).

    `reduce_range="auto"` (the default) picks by this CPU (`inductor_quant.cpu_info()`): where
    oneDNN has VNNI/AMX, 8-bit activations and weights; where it has not (AVX2 / AVX-512 without
    VNNI), weights in [-64, 63]. oneDNN adds pairs of int8 products in int16 there and would
    saturate on 8-bit x 8-bit (the compiled output would differ from the eager one; the passes
    keep such layers in fp32 instead); 255 * 64 * 2 fits. 7-bit weights were measured more
    accurate than 7-bit activations on real models (MiniLM embedding cosine to fp32 0.992 vs
    0.975; Fashion-MNIST CNN SQNR 39.6 vs 36.8 dB) at the same speed (the same kernels).
    True / False are always honored (True: activations in [0, 127], weights 8 bits: exact
    everywhere too). A model quantized on one kind of CPU and deployed on the other: pass
    `reduce_range=True`, or build the config on the target kind.
    """
    if reduce_range == "auto":
        return _x86_config(bool(is_qat), bool(is_dynamic), False, cpu_info().int8_weight_range)
    if not isinstance(reduce_range, bool):
        raise ValueError(f"reduce_range must be True, False or 'auto', got {reduce_range!r}")
    return _x86_config(bool(is_qat), bool(is_dynamic), reduce_range, (-128, 127))


@functools.lru_cache(maxsize=None)  # keyed on normalized positional args: one object per recipe
def _x86_config(is_qat: bool, is_dynamic: bool, reduce_range: bool, weight_range: tuple) -> QuantizationConfig:
    act = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=127 if reduce_range else 255,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=_activation_ctr(is_qat, is_dynamic),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_range[0],
        quant_max=weight_range[1],
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=_weight_ctr(is_qat, per_channel=True),
    )
    return _config(act, weight, is_qat)


def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """The XNNPACK-style recipe (same arguments as upstream's).

    activations: int8, per-tensor affine over [act_qmin, act_qmax]; HistogramObserver (PTQ),
    FusedMovingAvgObsFakeQuantize (QAT), PlaceholderObserver with `is_dynamic=True`.
    weights: int8 symmetric over [weight_qmin, weight_qmax], per-tensor or (`is_per_channel`)
    per-channel on axis 0. bias: None (stays fp32).
    """
    return _symmetric_config(
        bool(is_per_channel), bool(is_qat), bool(is_dynamic),
        int(act_qmin), int(act_qmax), int(weight_qmin), int(weight_qmax),
    )


@functools.lru_cache(maxsize=None)
def _symmetric_config(
    is_per_channel: bool, is_qat: bool, is_dynamic: bool,
    act_qmin: int, act_qmax: int, weight_qmin: int, weight_qmax: int,
) -> QuantizationConfig:
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=act_qmin,
        quant_max=act_qmax,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=_activation_ctr(is_qat, is_dynamic),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_qmin,
        quant_max=weight_qmax,
        qscheme=torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric,
        ch_axis=0 if is_per_channel else None,
        observer_or_fake_quant_ctr=_weight_ctr(is_qat, per_channel=is_per_channel),
    )
    return _config(act, weight, is_qat)


@functools.lru_cache(maxsize=None)
def get_x86_inductor_linear_dynamic_fp16_config() -> QuantizationConfig:
    """Linear weights stored and multiplied as fp16, activations and outputs left float.

    convert_pt2e rounds each weight fp32 -> fp16 -> fp32 (`convert_element_type.no_fuse`); our
    passes run it as oneDNN's `linear_dynamic_fp16` on the fp16 weight prepacked at freezing (a
    following relu folded in). Meant for linears (`set_module_type_qconfig(torch.nn.Linear, ...)`):
    a conv given it computes in fp32 on fp16-rounded weights, unfused. The name is upstream's."""
    weight = QuantizationSpec(dtype=torch.float16, observer_or_fake_quant_ctr=PlaceholderObserver)
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def get_x86_inductor_linear_weight_only_int8_config(group_size: Optional[int] = None) -> QuantizationConfig:
    """Linear weights stored as int8, symmetric over [-127, 127], one scale per output channel
    (`group_size=None`) or per group of `group_size` consecutive input channels of each output
    channel (a multiple of 32); activations and outputs left float (weight-only int8, "A16W8": a
    decoder's memory-bound decode reads a quarter of the fp32 weight bytes). Groups keep one large
    weight from coarsening its whole channel's grid: on Gemma-3-270M the KL divergence to the float
    model falls from 0.0038 per channel to 0.0015 in groups of 64 (docs/PERFORMANCE.md, section
    5b). Each group scale is rounded up to an fp16 value (a grid at most 2^-10 of a step coarser),
    so the compiled kernel streams the scales as fp16, exactly: 2 / group_size of the weight's
    bytes (1/16 in groups of 32) where fp32 scales would be twice that.

    convert_pt2e leaves `dequantize_per_channel(int8 weight) -> linear(x)` (group-wise: of the
    constant seen as [out * in / group_size, group_size], reshaped to [out, in]); the compile runs
    it as our kernel layer's weight-only int8 GEMM on the int8 weight (`iq_onednn.woq_linear`, fp32
    or bf16 activations), or leaves the float linear on the dequantized weight where that kernel is
    not available and `stats()["unfused"]` says so. Meant for linears
    (`set_module_type_qconfig(torch.nn.Linear, ...)` or per module name) whose in_features divide
    by `group_size`."""
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0 or group_size % 32):
        raise ValueError(f"group_size={group_size!r}: None (one scale per output channel) or a positive multiple "
                         "of 32 (our group-wise int8 kernel's step)")
    return _weight_only_int8(group_size)


@functools.lru_cache(maxsize=None)
def _weight_only_int8(group_size: Optional[int]) -> QuantizationConfig:
    if group_size is None:
        observer = _weight_ctr(False, per_channel=True)
    else:
        observer = GroupwiseMinMaxObserver.with_args(group_size=group_size, eps=_EPS, fp16_scales=True)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, observer_or_fake_quant_ctr=observer)
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def get_x86_inductor_linear_weight_only_int4_config(group_size: int = 128, symmetric: Optional[bool] = None,
                                                    zero_point_domain: str = "int") -> QuantizationConfig:
    """Linear weights stored as 4-bit integers in [-8, 7], one scale per group of `group_size`
    consecutive input channels of each output channel; activations and outputs left float
    (weight-only int4, "A16W4": an eighth of the fp32 weight bytes). `symmetric=False` gives each
    group a zero point too (its min and max map to -8 and 7): all 16 levels cover the group's
    range, which suits weights that are not centred on 0; torch's int4 GEMM takes the zero points
    as its per-group offsets, so they cost nothing at run time. `zero_point_domain="float"`
    (asymmetric) fits each group's scale and a float zero point to its weights by least squares
    (GroupwiseLeastSquaresObserver) instead of spanning min to max with an integer zero point:
    the same kernels, a smaller error (the LLM recipes' choice); it needs convert_pt2e's default
    fold_quantize=True. `symmetric` defaults to True for "int", and must not be True for "float".

    convert_pt2e keeps the values in an int8 constant seen as [out * in / group_size, group_size]
    and leaves `dequantize_per_channel` of it -> reshape [out, in] -> linear(x). The compile packs
    the weight two values a byte and runs torch's int4 CPU GEMM (`_weight_int4pack_mm_for_cpu`),
    which takes group sizes 32, 64, 128 and 256 and an `out` that is a multiple of 16; other
    linears stay float on the dequantized weight and `stats()["unfused"]` says why. Meant for
    linears (`set_module_type_qconfig(torch.nn.Linear, ...)` or per module name) whose in_features
    divide by `group_size`."""
    if group_size not in int4pack.GROUPS:
        raise ValueError(f"group_size={group_size}: torch's int4 CPU GEMM takes one of {int4pack.GROUPS}")
    if zero_point_domain not in ("int", "float"):
        raise ValueError(f"zero_point_domain={zero_point_domain!r}: one of \"int\", \"float\"")
    if zero_point_domain == "float" and symmetric:
        raise ValueError("zero_point_domain=\"float\" fits an offset per group, an asymmetric scheme. Fix: drop "
                         "symmetric=True (or pass symmetric=False)")
    return _weight_only_int4(group_size, zero_point_domain == "int" and symmetric is not False, zero_point_domain)


@functools.lru_cache(maxsize=None)
def _weight_only_int4(group_size: int, symmetric: bool, zero_point_domain: str) -> QuantizationConfig:
    qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    observer = GroupwiseLeastSquaresObserver if zero_point_domain == "float" else GroupwiseMinMaxObserver
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-8, quant_max=7, qscheme=qscheme, ch_axis=0,
                              observer_or_fake_quant_ctr=observer.with_args(group_size=group_size, eps=_EPS))
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def get_x86_inductor_linear_dynamic_per_token_config(reduce_range: Union[bool, str] = "auto") -> QuantizationConfig:
    """Linear activations quantized at run time to int8, symmetric, one scale per token (row of the
    last dimension: choose_qparams_per_token); weights int8 symmetric per output channel; outputs
    float ("W8A8 dynamic", the prefill recipe of LLM decoders).

    The compile runs such a linear as oneDNN's int8 linear on the int8 rows with the row scales
    applied to its output (and the bias after them). Weights in [-127, 127]; `reduce_range="auto"`
    narrows them to this CPU's exact range where oneDNN has no VNNI (see the default config),
    True to 7 bits everywhere. Meant for linears (`set_module_type_qconfig(torch.nn.Linear, ...)`)."""
    if reduce_range == "auto":
        low, high = cpu_info().int8_weight_range
        return _per_token_config(max(low, -127), high)
    if not isinstance(reduce_range, bool):
        raise ValueError(f"reduce_range must be True, False or 'auto', got {reduce_range!r}")
    return _per_token_config(-64, 63) if reduce_range else _per_token_config(-127, 127)


@functools.lru_cache(maxsize=None)
def _per_token_config(weight_min: int, weight_max: int) -> QuantizationConfig:
    act = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           is_dynamic=True, observer_or_fake_quant_ctr=PerTokenDynamicObserver)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=weight_min, quant_max=weight_max,
                              qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=_weight_ctr(False, per_channel=True))
    return QuantizationConfig(input_activation=act, output_activation=None, weight=weight, bias=None)


def is_dynamic_config(config: QuantizationConfig) -> bool:
    act = config.input_activation
    return bool(act is not None and getattr(act, "is_dynamic", False))
