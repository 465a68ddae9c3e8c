"""Search functions: plain Python, traced with Inductor's decompositions (`fwd_only`).

Literals in a traced pattern become wildcards, so every dtype / quant range / constant a rule
depends on is checked in its `check_*` (prepack.py, post_ops.py). Constants a rule needs by value are bound by
name through `scalar_workaround` (each table row lists them with the tracing value).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from inductor_quant.kernels import compat

compat.load_quantized_decomposed()

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed

# --- pieces -------------------------------------------------------------------------------


def dq(x):
    return qd.dequantize_per_tensor.default(x, 0.05, 10, 0, 255, torch.uint8)


def dq_tensor(x, x_scale, x_zp):
    """Dynamic quantization: scale / zero point are tensors computed at run time (choose_qparams)."""
    return qd.dequantize_per_tensor.tensor(x, x_scale, x_zp, 0, 255, torch.uint8)


def dq_weight_per_channel(w, w_scale, w_zp):
    return qd.dequantize_per_channel.default(w, w_scale, w_zp, 0, -128, 127, torch.int8)


def dq_weight_per_tensor(w):
    return qd.dequantize_per_tensor.default(w, 0.02, 0, -128, 127, torch.int8)


# --- prepack: dq(x) -> conv / linear (dq(w)) ------------------------------------------------
# Under bf16 autocast, to(bfloat16) sits between each dq (and the bias) and the conv/linear.


def _cast(t, bf16: bool):
    return t.to(torch.bfloat16) if bf16 and t is not None else t


def _conv(x, w, b, bf16):
    return aten.convolution(_cast(dq(x), bf16), _cast(w, bf16), _cast(b, bf16),
                            [1, 1], [0, 0], [1, 1], False, [0, 0], 1)


def _linear(x, w, b, bf16):
    return F.linear(_cast(dq(x), bf16), _cast(w, bf16), _cast(b, bf16))


@functools.cache
def dq_conv(per_channel: bool, bias: bool, bf16: bool):
    """conv(dq(x), dq(w), b); in fp32 one pattern covers b=None (bias is a plain argument)."""
    if per_channel and bias:
        def dq_conv(x, w, w_scale, w_zp, b):
            return _conv(x, dq_weight_per_channel(w, w_scale, w_zp), b, bf16)
    elif per_channel:
        def dq_conv(x, w, w_scale, w_zp):
            return _conv(x, dq_weight_per_channel(w, w_scale, w_zp), None, bf16)
    elif bias:
        def dq_conv(x, w, b):
            return _conv(x, dq_weight_per_tensor(w), b, bf16)
    else:
        def dq_conv(x, w):
            return _conv(x, dq_weight_per_tensor(w), None, bf16)
    return dq_conv


def _linear_dyn(x, x_scale, x_zp, w, b, bf16):
    return F.linear(_cast(dq_tensor(x, x_scale, x_zp), bf16), _cast(w, bf16), _cast(b, bf16))


@functools.cache
def dq_linear(per_channel: bool, bias: bool, bf16: bool, dynamic: bool = False):
    """linear(dq(x), dq(w), b), traced: [view] -> addmm|mm(.., permute(w)) -> [view].
    dynamic: dq(x) takes tensor qparams (per-channel weights, as dynamic quantizers produce)."""
    if dynamic and bias:
        def dq_linear(x, x_scale, x_zp, w, w_scale, w_zp, b):
            return _linear_dyn(x, x_scale, x_zp, dq_weight_per_channel(w, w_scale, w_zp), b, bf16)
    elif dynamic:
        def dq_linear(x, x_scale, x_zp, w, w_scale, w_zp):
            return _linear_dyn(x, x_scale, x_zp, dq_weight_per_channel(w, w_scale, w_zp), None, bf16)
    elif per_channel and bias:
        def dq_linear(x, w, w_scale, w_zp, b):
            return _linear(x, dq_weight_per_channel(w, w_scale, w_zp), b, bf16)
    elif per_channel:
        def dq_linear(x, w, w_scale, w_zp):
            return _linear(x, dq_weight_per_channel(w, w_scale, w_zp), None, bf16)
    elif bias:
        def dq_linear(x, w, b):
            return _linear(x, dq_weight_per_tensor(w), b, bf16)
    else:
        def dq_linear(x, w):
            return _linear(x, dq_weight_per_tensor(w), None, bf16)
    return dq_linear


# --- fp16 weights: linear(x, fp32(fp16(w)), b), x a float activation -----------------------
# convert_pt2e's form of a float16 weight spec (get_x86_inductor_linear_dynamic_fp16_config):
# the fp32 weight rounded through fp16 by two `convert_element_type.no_fuse` (folded by no one).


def fp16_rounded(w):
    no_fuse = qd.convert_element_type.no_fuse
    return no_fuse(no_fuse(w, torch.float16), torch.float32)


@functools.cache
def fp16_weight_linear(bias: bool, relu: bool):
    """[relu](linear(x, fp16_rounded(w), b)), traced like dq_linear (same four forms)."""
    post = F.relu if relu else (lambda y: y)
    if bias:
        def fp16_weight_linear(x, w, b):
            return post(F.linear(x, fp16_rounded(w), b))
    else:
        def fp16_weight_linear(x, w):
            return post(F.linear(x, fp16_rounded(w)))
    return fp16_weight_linear


def fp16_linear_example(rank: int, bias: bool, rows: int = 4, layout: str = "contiguous"):
    """As linear_example, in float: fp32 input and weight."""
    args = [laid_out(torch.randn(*([2] * (rank - 2)), rows, 8), layout), torch.randn(6, 8)]
    return args + ([torch.randn(6)] if bias else [])


# --- weight-only int8: linear(x, dq(w), b), x a float activation ----------------------------
# convert_pt2e's form of an int8 weight spec with no activation spec
# (get_x86_inductor_linear_weight_only_int8_config). Under bf16 autocast the dequantized weight
# and the bias are cast to bf16 and the input is bf16 already (or cast: `x` matches the cast).


@functools.cache
def woq_int8_linear(bias: bool, bf16: bool):
    """linear(x, dq_per_channel(w), b), traced like dq_linear (the same forms)."""
    if bias:
        def woq_int8_linear(x, w, w_scale, w_zp, b):
            return F.linear(x, _cast(dq_weight_per_channel(w, w_scale, w_zp), bf16), _cast(b, bf16))
    else:
        def woq_int8_linear(x, w, w_scale, w_zp):
            return F.linear(x, _cast(dq_weight_per_channel(w, w_scale, w_zp), bf16))
    return woq_int8_linear


def woq_linear_example(rank: int, bias: bool, bf16: bool, rows: int = 4, layout: str = "contiguous"):
    """A float input (bf16 under autocast), an int8 [6, 8] weight with per-channel qparams."""
    x = torch.randn(*([2] * (rank - 2)), rows, 8).to(torch.bfloat16 if bf16 else torch.float32)
    args = [laid_out(x, layout), _s8(6, 8), torch.rand(6), torch.zeros(6, dtype=torch.int64)]
    return args + ([torch.randn(6)] if bias else [])


# --- per-token dynamic int8: linear(dq_per_token(x), dq(w), b) ------------------------------
# convert_pt2e's form of get_x86_inductor_linear_dynamic_per_token_config: x int8, its row scales
# and zero points tensors computed at run time (choose_qparams_per_token), weights per channel.


@functools.cache
def per_token_linear(bias: bool, bf16: bool):
    """linear(dq_per_token(x, s, zp), dq_per_channel(w), b), the forms of dq_linear."""
    def act(x, x_scale, x_zp):
        return _cast(qd.dequantize_per_token.default(x, x_scale, x_zp, -127, 127, torch.int8, torch.float32), bf16)
    if bias:
        def per_token_linear(x, x_scale, x_zp, w, w_scale, w_zp, b):
            return F.linear(act(x, x_scale, x_zp), _cast(dq_weight_per_channel(w, w_scale, w_zp), bf16), _cast(b, bf16))
    else:
        def per_token_linear(x, x_scale, x_zp, w, w_scale, w_zp):
            return F.linear(act(x, x_scale, x_zp), _cast(dq_weight_per_channel(w, w_scale, w_zp), bf16))
    return per_token_linear


def per_token_linear_example(rank: int, bias: bool, bf16: bool = False, rows: int = 4, layout: str = "contiguous"):
    """An int8 input with one scale and zero point per row, an int8 [6, 8] per-channel weight
    (`bf16`: the table's signature; the int8 input is the same under autocast)."""
    x = laid_out(_s8(*([2] * (rank - 2)), rows, 8), layout)
    args = [x, torch.rand(*x.shape[:-1], 1), torch.zeros(*x.shape[:-1], 1), _s8(6, 8), torch.rand(6),
            torch.zeros(6, dtype=torch.int64)]
    return args + ([torch.randn(6)] if bias else [])


# --- weight-only group-wise: linear(x, reshape(dq(w_grouped)), b) --------------------------
# convert_pt2e's form of a group-wise weight spec (get_x86_inductor_linear_weight_only_int4_config,
# get_x86_inductor_linear_weight_only_int8_config(group_size=...)): the int8 constant holds 4- or
# 8-bit values as [out * in / group, group], dequantized per row of that view, then reshaped to
# [out, in]. Sizes are wildcards in a traced pattern: any group matches; the rules tell 4 bits from
# 8 by the dequantize's range (passes/registry.py: rows that trace alike, first check that passes).


@functools.cache
def woq_grouped_linear(bias: bool, bf16: bool):
    """linear(x, reshape(dq_per_channel(w_grouped)), b), the forms of woq_int8_linear."""
    def weight(w, w_scale, w_zp):
        return _cast(aten.reshape(dq_weight_per_channel(w, w_scale, w_zp), [6, 8]), bf16)
    if bias:
        def woq_grouped_linear(x, w, w_scale, w_zp, b):
            return F.linear(x, weight(w, w_scale, w_zp), _cast(b, bf16))
    else:
        def woq_grouped_linear(x, w, w_scale, w_zp):
            return F.linear(x, weight(w, w_scale, w_zp))
    return woq_grouped_linear


def woq_grouped_linear_example(rank: int, bias: bool, bf16: bool, rows: int = 4, layout: str = "contiguous"):
    """woq_linear_example with the [6, 8] weight in groups of 4: an int8 [12, 4] constant."""
    x, _, _, _, *b = woq_linear_example(rank, bias, bf16, rows, layout)
    return [x, torch.randint(-8, 8, (12, 4), dtype=torch.int8), torch.rand(12), torch.zeros(12, dtype=torch.int64), *b]


def _u8(*shape):
    return torch.randint(0, 255, shape, dtype=torch.uint8)


def _s8(*shape):
    return torch.randint(-127, 127, shape, dtype=torch.int8)


def conv_example(per_channel: bool, bias: bool):
    args = [_u8(1, 4, 5, 5), _s8(6, 4, 3, 3)]
    if per_channel:
        args += [torch.rand(6), torch.zeros(6, dtype=torch.int64)]
    return args + ([torch.randn(6)] if bias else [])


def laid_out(x, layout: str):
    """x with the same values in another memory layout, as a linear's input:
    contiguous    views as 2-D: [view] addmm|mm [view];
    transposed    last two dims swapped: expand + bmm (3-D), or expand + view + bmm + view
                  (more dims: the leading dims still merge into one batch dim);
    permuted      4-D, channels last-like: the leading dims no longer merge, so the input is
                  copied contiguous (clone) before that view."""
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "permuted":
        return x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return x


def linear_example(rank: int, per_channel: bool, bias: bool, rows: int = 4, dynamic: bool = False,
                   layout: str = "contiguous"):
    """rows=1: Inductor decomposes a 1-row addmm/mm into mul + sum (+ mul by alpha/beta + add).
    layout: see laid_out (a non-contiguous input's bias is a separate add)."""
    args = [laid_out(_u8(*([2] * (rank - 2)), rows, 8), layout)]
    if dynamic:
        args += [torch.tensor(0.05, dtype=torch.float64), torch.tensor(3, dtype=torch.int64)]
    args += [_s8(6, 8)]
    if per_channel:
        args += [torch.rand(6), torch.zeros(6, dtype=torch.int64)]
    return args + ([torch.randn(6)] if bias else [])


# --- post-ops on a fused result `y` --------------------------------------------------------
# Unary post-ops: each capability record's `search` and `constants` (kernels/capabilities.py).


# --- int8 propagation: q(op(dq(x))) with one set of qparams ------------------------------


def dq_maxpool_q(x):
    return quantize(F.max_pool2d(dq(x), 3, 2, 1))


def dq_view_q(x):
    return quantize(torch.flatten(dq(x), 1))


def dq_reshape_q(x):
    """reshape of a non-contiguous tensor: clone to contiguous, then view."""
    return quantize(aten.view(aten.clone(dq(x), memory_format=torch.contiguous_format), [1, 144]))


def dq_permute_q(x):
    return quantize(dq(x).permute(0, 2, 3, 1))


@functools.cache
def dq_cat_q(with_dim: bool):
    """q(cat([dq(x_1), ..., dq(x_n)], dim)) for any n: built, not traced (a trace fixes n).
    with_dim=False: the form a cat along dim 0 exports as (no dim argument)."""
    pm = compat.pattern_matcher()
    qparams = [pm.Ignored() for _ in range(5)]
    dq_any = pm.CallFunction(qd.dequantize_per_tensor.default, pm.Arg(), *qparams)
    cat = pm.CallFunction(aten.cat.default, pm.ListOf(dq_any), *([pm.Ignored()] if with_dim else []))
    return pm.CallFunction(qd.quantize_per_tensor.default, cat, *qparams, _users=0)


def u8_example(n: int, channels_last: bool = False):
    """channels_last: so a clone to contiguous is not traced away as a no-op."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [_u8(1, 4, 6, 6).contiguous(memory_format=fmt) for _ in range(n)]


def clone(y):
    """eval-mode dropout exports as a copy"""
    return aten.clone(y)


def add(y, other):
    return y + other


def add_swapped(y, other):
    return other + y


def to_bf16(y):
    return y.to(torch.bfloat16)


def quantize(y):
    return qd.quantize_per_tensor.default(y, 0.05, 10, 0, 255, torch.uint8)


@functools.cache
def traced(search_fn, example_key: tuple, scalars: tuple = ()):
    """The pattern of `search_fn` traced on example inputs built from `example_key`."""
    maker, *margs = example_key
    pm = compat.pattern_matcher()
    return pm.gen_pattern(search_fn, maker(*margs), pm.fwd_only, scalar_workaround=dict(scalars))


def float_example(n: int, dtype=torch.float32):
    return [torch.randn(2, 3, dtype=dtype) for _ in range(n)]
