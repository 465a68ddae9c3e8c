"""Ask the kernel itself: run a oneDNN int8 op once, on this CPU, where its behaviour is in doubt.

Each probe is cached per process and runs real tensors even when called from inside a compile.
A probe that cannot run answers False (stay unfused): it proves nothing.
"""

from __future__ import annotations

import functools

import torch

from . import compat, native, reference
from .onednn import Binary, ConvGeometry, Output, QParams, eager, qconv, qconv_prepack, qlinear, qlinear_binary, qlinear_prepack


@functools.lru_cache(maxsize=None)
def qconv_is_exact(x_shape: tuple, w_shape: tuple, geom: ConvGeometry, act_max: int = 255, w_max: int = 127) -> bool:
    """Does the int8 conv kernel compute this geometry right? Run once on random data within
    the ranges the model uses (activations up to `act_max`, weights up to +-`w_max`) (batch 1,
    the layout Inductor feeds it) against the plain-PyTorch reference. torch 2.13's kernel is
    wrong for some strided convs with output width 1 and for conv3d over depth 1 with a deeper
    kernel (differential fuzzer findings); callers probe only those suspect classes."""
    try:
        with compat.real_tensors(), torch.no_grad():
            return _run_qconv_probe(x_shape, w_shape, geom, act_max, w_max)
    except Exception:  # noqa: BLE001 - a probe that cannot run proves nothing: stay unfused
        return False


def _run_qconv_probe(x_shape: tuple, w_shape: tuple, geom: ConvGeometry, act_max: int, w_max: int) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, act_max + 1, (1, *x_shape[1:]), dtype=torch.uint8, generator=g)
    if x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    w = torch.randint(-w_max, w_max + 1, w_shape, dtype=torch.int8, generator=g)
    w_scale, w_zp, xq = torch.full((w_shape[0],), 0.01), torch.zeros(w_shape[0], dtype=torch.int64), QParams(0.02, 7)
    packed = qconv_prepack(eager, w, w_scale, xq, geom, list(x.shape))
    got = qconv(eager, x, xq, packed, w_scale, w_zp, None, geom)
    want = reference.qconv(x, xq, w, w_scale, w_zp, None, geom)
    return bool((got - want).abs().max() <= 1e-3 * want.abs().max() + 1e-4)


@functools.lru_cache(maxsize=None)
def qlinear_binary_builds(out_dtype: torch.dtype, other_dtype: torch.dtype, name: str) -> bool:
    """Does oneDNN build an int8 matmul with this output dtype, extra-input dtype and binary
    post-op here? Without AVX-512 it has none with a bf16 extra input and `add` ("could not create
    a primitive descriptor"); fp32 extra inputs build everywhere."""
    try:
        with compat.real_tensors(), torch.no_grad():
            x, w = torch.zeros(2, 16, dtype=torch.uint8), torch.ones(16, 16, dtype=torch.int8)
            scale, zp = torch.ones(16), torch.zeros(16, dtype=torch.int64)
            packed = qlinear_prepack(eager, w, list(x.shape))
            out = Output(out_dtype, 1.0, 0)
            qlinear_binary(eager, x, QParams(1.0, 0), packed, scale, zp, torch.zeros(2, 16, dtype=other_dtype), None,
                           out, Binary(name))
        return True
    except RuntimeError:
        return False


def int8_pair_sums_saturate() -> bool:
    """Does a u8 x s8 matmul of 255s and 127s come out saturated here (no VNNI: pairs of
    products are added in int16)? kernels/cpu.py takes VNNI-or-not from this answer: it follows
    oneDNN's dispatch under any cap. Raises where there is no oneDNN int8 kernel."""
    k = 64
    with compat.real_tensors(), torch.no_grad(), torch.device("cpu"):  # whatever the default device
        x = torch.full((4, k), 255, dtype=torch.uint8)
        w = torch.full((16, k), 127, dtype=torch.int8)
        scale, zp = torch.ones(16), torch.zeros(16, dtype=torch.int64)
        packed = qlinear_prepack(eager, w, list(x.shape))
        y = qlinear(eager, x, QParams(1.0, 0), packed, scale, zp, None)
    return bool((y - 255.0 * 127 * k).abs().max() > 0.5)


@functools.lru_cache(maxsize=None)
def weight_only_linear_builds(dtype: torch.dtype) -> bool:
    """Does oneDNN here build our weight-only int8 matmul (weights converted in registers) for
    activations of `dtype`? fp32 does from AVX2 on; bf16 needs AVX-512 (without it: "unimplemented",
    seen with ONEDNN_MAX_CPU_ISA=AVX2). Asks our kernel layer (kernels/native.py), loading it first:
    the answer is cached, and one given before the layer loaded would say no for the whole process."""
    if not native.available():
        return False
    try:
        with compat.real_tensors(), torch.no_grad(), torch.device("cpu"):
            w, scale = torch.ones(16, 16, dtype=torch.int8), torch.ones(16)
            out = torch.ops.iq_onednn.woq_linear(torch.ones(2, 16, dtype=dtype), w, scale, None, 2)
            return bool((out.float() - 16.0).abs().max() == 0)
    except Exception:  # noqa: BLE001 - not built here, or our library not loaded: no such kernel
        return False


@functools.lru_cache(maxsize=None)
def attention_builds(dtype: torch.dtype) -> bool:
    """Does our attention (kernels/native.py) build and compute softmax(q k^T) v here for `dtype`?
    Asks our kernel layer, loading it first (the answer is cached, as weight_only_linear_builds')."""
    if not native.available():
        return False
    try:
        with compat.real_tensors(), torch.no_grad(), torch.device("cpu"):
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, 2, 4, 8, generator=g).to(dtype) for _ in range(3))
            got = torch.ops.iq_onednn.attention(q, k, v, None, 0.5).float()
            want = torch.softmax(q.float() @ k.float().transpose(-2, -1) * 0.5, -1) @ v.float()
            return bool((got - want).abs().max() <= (1e-5 if dtype == torch.float32 else 5e-2))
    except Exception:  # noqa: BLE001 - not built here, or our library not loaded: no such kernel
        return False
