"""Our own kernel layer (`iq_onednn.qconv2d`, kernels/native.py) against torch's op: bitwise the
same numbers on every geometry, output and post-op, a layer's primitive built once and never
served for another layer, and a clear fallback when the library cannot be built."""

import dataclasses
import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from inductor_quant.kernels import int4pack, native, probe
from inductor_quant.kernels.cpu import cpu_features, cpu_info
from inductor_quant.kernels import onednn as K
from kernel_helpers import W_MAX

E = K.eager
GEOMETRIES = {  # x shape, weight shape, geometry
    "1x1": ((1, 32, 14, 14), (48, 32, 1, 1), K.ConvGeometry((1, 1), (0, 0), (1, 1), 1)),
    "3x3-pad": ((2, 16, 9, 9), (24, 16, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
    "3x3-s2": ((1, 16, 15, 15), (16, 16, 3, 3), K.ConvGeometry((2, 2), (1, 1), (1, 1), 1)),
    "dilated-odd-pad": ((1, 8, 11, 10), (8, 8, 3, 2), K.ConvGeometry((2, 1), (2, 1), (2, 3), 1)),
    "groups": ((1, 16, 8, 8), (32, 4, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 4)),
    "depthwise": ((1, 32, 10, 10), (32, 1, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 32)),
}
OUTPUTS = {"fp32": K.Output(), "bf16": K.Output(torch.bfloat16), "u8": K.Output(torch.uint8, 0.05, 3),
           "s8": K.Output(torch.int8, 0.04, 0), "u8-zp0": K.Output(torch.uint8, 0.05, 0)}
UNARY = {"none": K.Unary(), "relu": K.Unary("relu"), "hardtanh": K.Unary("hardtanh", (0.0, 6.0)),
         "hardswish": K.Unary("hardswish"), "swish": K.Unary("swish")}


@pytest.fixture(scope="module", autouse=True)
def library():
    assert native.load() == "", "the own kernel library must build and load on this machine"


def _layer(name, seed=0):
    x_shape, w_shape, geom = GEOMETRIES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, x_shape, dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-W_MAX, W_MAX + 1, w_shape, dtype=torch.int8, generator=g)
    w_scale = torch.rand(w_shape[0], generator=g) * 0.01 + 0.001
    bias = torch.randn(w_shape[0], generator=g)
    return x, w, w_scale, bias, geom


def _both(x, w, w_scale, bias, geom, xq, out, unary):
    """(torch's op on its prepacked weight, ours on the plain weight) for one call."""
    f = K.FusedOp("qconv", x, xq, qconv_packed(w, w_scale, xq, geom, x), w_scale,
                  torch.zeros(w.shape[0], dtype=torch.long), bias, geom, out, unary)
    return K.emit(E, f), native.qconv2d(E, f, w)


def qconv_packed(w, w_scale, xq, geom, x):
    return K.qconv_prepack(E, w, w_scale, xq, geom, list(x.shape))


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_bitwise_torch_every_geometry_and_output(geometry, output):
    x, w, w_scale, bias, geom = _layer(geometry)
    for xq in (K.QParams(0.02, 0), K.QParams(0.02, 7)):
        theirs, ours = _both(x, w, w_scale, bias, geom, xq, OUTPUTS[output], K.Unary("relu"))
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.stride() == theirs.stride()
        assert torch.equal(ours, theirs), f"x_zp {xq.zero_point}: max diff {(ours.float() - theirs.float()).abs().max()}"


@pytest.mark.parametrize("unary", UNARY)
@pytest.mark.parametrize("output", ["fp32", "u8"])
def test_bitwise_torch_every_post_op(unary, output):
    x, w, w_scale, bias, geom = _layer("3x3-pad")
    theirs, ours = _both(x, w, w_scale, bias, geom, K.QParams(0.03, 5), OUTPUTS[output], UNARY[unary])
    assert torch.equal(ours, theirs)


def test_no_bias_and_contiguous_input():
    """An NCHW-contiguous input (the model's own input to its first conv) is taken as torch takes it."""
    x, w, w_scale, _, geom = _layer("3x3-s2")
    theirs, ours = _both(x.contiguous(), w, w_scale, None, geom, K.QParams(0.02, 0), OUTPUTS["u8"], K.Unary())
    assert torch.equal(ours, theirs)


def test_a_layer_is_built_once_and_a_new_weight_is_a_new_layer():
    native_ops = torch.ops.iq_onednn
    native_ops.clear_cache()
    x, w, w_scale, bias, geom = _layer("1x1")
    xq, out = K.QParams(0.02, 0), OUTPUTS["u8"]
    for _ in range(3):
        _both(x, w, w_scale, bias, geom, xq, out, K.Unary())
    assert native_ops.cached_layers() == 1
    # other scale values are runtime arguments of the same primitive (a zero point of 0 vs not
    # is another primitive, as in torch: it skips the compensation work)
    _both(x, w, w_scale, bias, geom, K.QParams(0.05, 0), K.Output(torch.uint8, 0.07, 3), K.Unary())
    assert native_ops.cached_layers() == 1
    # free the weight and make another of the same shape (the allocator tends to hand back the
    # same address): the cached layer must not be served for it
    del w, w_scale
    gc.collect()
    _, w2, w_scale2, _, _ = _layer("1x1", seed=5)
    theirs, ours = _both(x, w2, w_scale2, bias, geom, xq, out, K.Unary())
    assert torch.equal(ours, theirs)
    assert native_ops.cached_layers() == 1  # the dead layer was dropped


def test_thread_count_is_part_of_the_layer():
    x, w, w_scale, bias, geom = _layer("3x3-pad")
    before = torch.get_num_threads()
    try:
        for threads in (1, max(2, before)):
            torch.set_num_threads(threads)
            theirs, ours = _both(x, w, w_scale, bias, geom, K.QParams(0.02, 3), OUTPUTS["u8"], K.Unary("relu"))
            assert torch.equal(ours, theirs), f"{threads} threads"
    finally:
        torch.set_num_threads(before)


def test_refuses_what_it_does_not_compute():
    x, w, w_scale, bias, geom = _layer("1x1")
    f = K.FusedOp("qconv", x.to(torch.int8), K.QParams(0.02, 0), None, w_scale, None, bias, geom)
    with pytest.raises(RuntimeError, match="uint8 activations"):
        native.qconv2d(E, f, w)
    with pytest.raises(RuntimeError, match="float output takes output scale 1"):
        torch.ops.iq_onednn.qconv2d(x, 0.02, 0, w, w_scale, bias, 1, 1, 0, 0, 1, 1, 1, 0.5, 0, torch.float32, 0, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="unknown post-op code 9"):
        torch.ops.iq_onednn.qconv2d(x, 0.02, 0, w, w_scale, bias, 1, 1, 0, 0, 1, 1, 1, 1.0, 0, None, 9, 0.0, 0.0)


def test_unbuildable_library_warns_once_and_answers_unavailable(tmp_path):
    """No compiler: one warning naming the cause; `available()` is False (the passes keep torch's ops)."""
    code = textwrap.dedent("""
        import warnings
        from inductor_quant.kernels import native
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = native.available(), native.available()
        print(ok, len(caught), caught[0].message if caught else "")
    """)
    env = {**os.environ, "INDUCTOR_QUANT_CACHE_DIR": str(tmp_path), "CXX": "no-such-compiler"}
    out = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("(False, False) 1 ") and "no C++ compiler (no-such-compiler)" in out, out


@pytest.mark.parametrize("output", ["u8", "fp32", "bf16"])
@pytest.mark.parametrize("unary", ["none", "relu"])
def test_residual_sum_writes_over_the_accumulator_bitwise_torch(output, unary):
    """torch's `qconv2d_pointwise.binary` (sum) writes into its accumulator and returns a copy;
    ours writes into it and returns nothing. Same values."""
    x, w, w_scale, bias, geom = _layer("3x3-pad")
    out = OUTPUTS[output]
    acc_q = K.QParams(0.04, 6) if out.quantized else K.QParams(1.0, 0)
    g = torch.Generator().manual_seed(3)
    shape = (x.shape[0], w.shape[0], x.shape[2], x.shape[3])
    if out.quantized:
        accum = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    else:
        accum = torch.randn(shape, generator=g).to(out.dtype)
    accum = accum.contiguous(memory_format=torch.channels_last)
    xq = K.QParams(0.02, 5)
    f = K.FusedOp("qconv", x, xq, qconv_packed(w, w_scale, xq, geom, x), w_scale,
                  torch.zeros(w.shape[0], dtype=torch.long), bias, geom, out,
                  binary=K.Binary("sum", 1.0, acc_q, UNARY[unary]), other=accum.clone())
    theirs = K.emit(E, f)
    ours_acc = accum.clone()
    assert native.qconv2d_sum_(E, dataclasses.replace(f, other=ours_acc), w) is None
    assert torch.equal(ours_acc, theirs)


LINEAR_UNARY = {**UNARY, "leaky_relu": K.Unary("leaky_relu", (0.1,)), "tanh": K.Unary("tanh"),
                "gelu": K.Unary("gelu", (), "none"), "gelu-tanh": K.Unary("gelu", (), "tanh")}


def _linear_both(x, w, w_scale, bias, xq, out, unary, x_shape):
    f = K.FusedOp("qlinear", x, xq, K.qlinear_prepack(E, w, x_shape), w_scale, torch.zeros(w.shape[0], dtype=torch.long),
                  bias, None, out, unary)
    m_hint = x_shape[0] if x_shape is not None and len(x_shape) == 2 else 1
    return K.emit(E, f), native.qlinear(E, f, w, m_hint)


@pytest.mark.parametrize("unary", LINEAR_UNARY)
@pytest.mark.parametrize("output", ["fp32", "bf16", "u8", "s8"])
def test_linear_bitwise_torch(unary, output):
    g = torch.Generator().manual_seed(7)
    w = torch.randint(-W_MAX, W_MAX + 1, (40, 24), dtype=torch.int8, generator=g)
    w_scale, bias = torch.rand(40, generator=g) * 0.01 + 0.001, torch.randn(40, generator=g)
    for x_shape in ((6, 24), (2, 5, 24)):
        x = torch.randint(0, 256, x_shape, dtype=torch.uint8, generator=g)
        for xq, hint in ((K.QParams(0.02, 0), list(x_shape)), (K.QParams(0.02, 9), None)):
            theirs, ours = _linear_both(x, w, w_scale, bias, xq, OUTPUTS[output], LINEAR_UNARY[unary], hint)
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            assert torch.equal(ours, theirs), (x_shape, xq, (ours.float() - theirs.float()).abs().max())


@pytest.mark.parametrize("output", ["u8", "fp32", "bf16"])
@pytest.mark.parametrize("unary", ["none", "relu"])
@pytest.mark.parametrize("x_shape", [(6, 24), (2, 5, 24)], ids=["2d", "3d"])
def test_linear_residual_sum_writes_over_the_accumulator_bitwise_torch(output, unary, x_shape):
    """torch's `qlinear_pointwise.binary` (sum) against ours, which writes over its accumulator
    and returns nothing: the same values in the accumulator."""
    g = torch.Generator().manual_seed(9)
    w = torch.randint(-W_MAX, W_MAX + 1, (40, 24), dtype=torch.int8, generator=g)
    w_scale, bias = torch.rand(40, generator=g) * 0.01 + 0.001, torch.randn(40, generator=g)
    x = torch.randint(0, 256, x_shape, dtype=torch.uint8, generator=g)
    out = OUTPUTS[output]
    acc_q = K.QParams(0.04, 6) if out.quantized else K.QParams(1.0, 0)
    shape = (*x_shape[:-1], 40)
    accum = (torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) if out.quantized
             else torch.randn(shape, generator=g).to(out.dtype))
    for xq in (K.QParams(0.02, 0), K.QParams(0.02, 9)):
        f = K.FusedOp("qlinear", x, xq, K.qlinear_prepack(E, w, list(x_shape)), w_scale,
                      torch.zeros(40, dtype=torch.long), bias, None, out,
                      binary=K.Binary("sum", 1.0, acc_q, UNARY[unary]), other=accum.clone())
        theirs = K.emit(E, f)
        ours_acc = accum.clone()
        m_hint = x_shape[0] if len(x_shape) == 2 else 1
        assert native.qlinear_sum_(E, dataclasses.replace(f, other=ours_acc), w, m_hint) is None
        assert torch.equal(ours_acc, theirs), (xq, (ours_acc.float() - theirs.float()).abs().max())
        assert not torch.equal(ours_acc, accum)  # it did write


@pytest.mark.parametrize("output", ["fp32", "bf16", "u8"])
@pytest.mark.parametrize("addend", ["fp32", "bf16"])
@pytest.mark.parametrize("unary", ["none", "relu"])
def test_linear_residual_add_is_bitwise_torch(output, addend, unary):
    """torch's `qlinear_pointwise.binary` with `add` (a float extra input, a new output) against ours."""
    out = OUTPUTS[output]
    other_dtype = torch.float32 if addend == "fp32" else torch.bfloat16
    if not probe.qlinear_binary_builds(out.dtype, other_dtype, "add"):
        pytest.skip(f"torch's op has no `add` of {other_dtype} into {out.dtype} on this CPU")
    g = torch.Generator().manual_seed(11)
    w = torch.randint(-W_MAX, W_MAX + 1, (40, 24), dtype=torch.int8, generator=g)
    w_scale, bias = torch.rand(40, generator=g) * 0.01 + 0.001, torch.randn(40, generator=g)
    for x_shape in ((6, 24), (2, 5, 24)):
        x = torch.randint(0, 256, x_shape, dtype=torch.uint8, generator=g)
        other = torch.randn((*x_shape[:-1], 40), generator=g).to(other_dtype)
        for xq in (K.QParams(0.02, 0), K.QParams(0.02, 9)):
            f = K.FusedOp("qlinear", x, xq, K.qlinear_prepack(E, w, list(x_shape)), w_scale,
                          torch.zeros(40, dtype=torch.long), bias, None, out,
                          binary=K.Binary("add", 1.0, K.QParams(), UNARY[unary]), other=other)
            theirs = K.emit(E, f)
            ours = native.qlinear_add(E, f, w, x_shape[0] if len(x_shape) == 2 else 1)
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            assert torch.equal(ours, theirs), (x_shape, xq, (ours.float() - theirs.float()).abs().max())


def test_linear_residual_sum_refuses_an_accumulator_it_cannot_write_as_the_output():
    g = torch.Generator().manual_seed(10)
    w = torch.randint(-W_MAX, W_MAX + 1, (8, 16), dtype=torch.int8, generator=g)
    x = torch.randint(0, 256, (4, 16), dtype=torch.uint8, generator=g)
    f = K.FusedOp("qlinear", x, K.QParams(0.02, 0), None, torch.full((8,), 0.01), None, None, None, K.Output(),
                  binary=K.Binary("sum", 1.0, K.QParams(1.0, 0), K.Unary()), other=None)
    for bad, why in ((torch.zeros(8, 4).t(), "not contiguous"), (torch.zeros(4, 9), "shape"),
                     (torch.zeros(4, 8, dtype=torch.bfloat16), "dtype")):
        with pytest.raises(RuntimeError, match="qlinear_sum_: the accumulator must be contiguous"):
            native.qlinear_sum_(E, dataclasses.replace(f, other=bad), w, 4)


@pytest.mark.parametrize("n", [16, 96, 128])
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-channel", "per-tensor"])
def test_linear_int8_input_with_zero_point(n, per_tensor):
    """int8 activations with a zero point (XNNPACK-style configs): the weight layout is chosen as
    for uint8 (as torch's prepack does); chosen for int8 it was wrong from N = 96 on."""
    g = torch.Generator().manual_seed(8)
    w = torch.randint(-W_MAX, W_MAX + 1, (n, 32), dtype=torch.int8, generator=g)
    w_scale = torch.tensor([0.0014]) if per_tensor else torch.rand(n, generator=g) * 0.01 + 0.001
    x = torch.randint(-128, 128, (2, 8, 32), dtype=torch.int8, generator=g)
    for xq, out in ((K.QParams(0.0268, 14), OUTPUTS["fp32"]), (K.QParams(0.02, 0), K.Output(torch.int8, 0.05, 1))):
        theirs, ours = _linear_both(x, w, w_scale, None, xq, out, K.Unary("relu"), [2, 8, 32])
        assert torch.equal(ours, theirs), (xq, (ours.float() - theirs.float()).abs().max())


# --- weight-only int8 linear ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("x_shape", [(1, 64), (16, 64), (2, 5, 64)], ids=["decode", "rows", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_weight_only_linear_is_the_linear_on_the_dequantized_weight(dtype, x_shape, bias):
    """fp32: within fp32 rounding of F.linear on w * scale (the scale applied after the sum
    instead of to each weight); bf16: within bf16 rounding of the same, computed in fp32."""
    g = torch.Generator().manual_seed(9)
    w = torch.randint(-127, 128, (48, 64), dtype=torch.int8, generator=g)
    w_scale = torch.rand(48, generator=g) * 0.01 + 0.001
    b = torch.randn(48, generator=g).to(dtype) if bias else None
    x = torch.randn(x_shape, generator=g).to(dtype)
    rows = x.numel() // 64
    if not probe.weight_only_linear_builds(dtype) and rows > 4:  # oneDNN's bf16 needs AVX-512 (the passes ask first)
        assert dtype is torch.bfloat16 and "avx512f" not in cpu_info().features
        with pytest.raises(RuntimeError, match="primitive descriptor"):
            torch.ops.iq_onednn.woq_linear(x, w, w_scale, b, 16)
        return
    out = torch.ops.iq_onednn.woq_linear(x, w, w_scale, b, 16)
    ref = torch.nn.functional.linear(x.float(), w.float() * w_scale[:, None], None if b is None else b.float())
    assert out.shape == ref.shape and out.dtype == dtype
    tol = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # a non-contiguous input computes the same
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert torch.equal(torch.ops.iq_onednn.woq_linear(xt, w, w_scale, b, 16), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k", [640, 37, 8], ids=["k640", "k37-tail", "k8"])
def test_weight_only_decode_rows_stream_the_weight(dtype, k):
    """One row (a decode step at batch 1) takes our GEMV (kernels/native/woq_gemv.h), more rows
    oneDNN: both the linear on the dequantized weight within fp32 rounding, channels not a
    multiple of the GEMV's block of 4 and K with a vector tail included."""
    g = torch.Generator().manual_seed(10)
    n = 4 * 37 + 3
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w_scale = torch.rand(n, generator=g) * 0.01 + 0.001
    b = torch.randn(n, generator=g).to(dtype)
    for rows in (1, 2, 4):
        x = torch.randn(rows, k, generator=g).to(dtype)
        if rows > 1 and not probe.weight_only_linear_builds(dtype):
            continue
        out = torch.ops.iq_onednn.woq_linear(x, w, w_scale, b, 1)
        ref = torch.nn.functional.linear(x.float(), w.float() * w_scale[:, None], b.float())
        tol = 1e-5 if dtype is torch.float32 else 1e-2
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k,group", [(640, 64), (640, 32), (256, 128), (96, 96)], ids=lambda v: str(v))
def test_weight_only_group_scales_decode_rows_and_prompts_are_the_linear_on_the_dequantized_weight(dtype, k, group):
    """Scales [out, in / group] (a multiple of 32): up to 16 rows (a decode step at a small
    batch) take our GEMV's group loop (each group's fp32 sum times its scale), more rows (a prompt)
    the float GEMM on the weight dequantized into x's dtype -- the eager model's weight exactly, so
    prompts match its linear bitwise; channels not a multiple of the GEMV's block of 4 included."""
    g = torch.Generator().manual_seed(13)
    n = 4 * 37 + 3
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w_scale = torch.rand(n, k // group, generator=g) * 0.01 + 0.001
    w_float = (w.float().view(n, k // group, group) * w_scale[..., None]).view(n, k)
    b = torch.randn(n, generator=g).to(dtype)
    for rows in (1, 3, 17):
        x = torch.randn(2, rows, k, generator=g).to(dtype)[:1]
        out = torch.ops.iq_onednn.woq_linear(x, w, w_scale, b, 1)
        assert out.dtype == dtype and out.shape == (1, rows, n)
        if rows > 16:  # the eager model: dequantize (fp32), cast to x's dtype, linear
            assert torch.equal(out, torch.nn.functional.linear(x, w_float.to(dtype), b))
        ref = torch.nn.functional.linear(x.float(), w_float, b.float())
        tol = 1e-5 if dtype is torch.float32 else 1e-2
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fp16_group_scales_give_what_their_fp32_values_give(dtype):
    """Group scales held as fp16 (what the passes give the op where every scale is an fp16 value:
    half the scale bytes a decode step streams) widen exactly: bitwise the call with the same
    values in fp32, through the GEMV (1, 2, 3 and 16 rows) and a prompt's path (17 rows)."""
    g = torch.Generator().manual_seed(21)
    n, k, group = 4 * 37 + 3, 640, 32
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    half = (torch.rand(n, k // group, generator=g) * 0.01 + 1e-4).half()
    b = torch.randn(n, generator=g).to(dtype)
    for rows in (1, 2, 3, 16, 17):
        x = torch.randn(rows, k, generator=g).to(dtype)
        ours = torch.ops.iq_onednn.woq_linear(x, w, half, b, 1)
        assert torch.equal(ours, torch.ops.iq_onednn.woq_linear(x, w, half.float(), b, 1)), rows


@pytest.mark.parametrize("k", [640, 33 * 1024], ids=["k640", "k33792-past-the-staged-scales"])
def test_bf16_rows_with_group_scales_stay_within_one_bf16_step_of_the_fp32_gemv(k):
    """bf16 rows with group scales (a bf16 decoder's decode step): on a CPU with AVX512-BF16 the
    GEMV multiplies them as they are, bf16 pairs times the exact int8 weights (`vdpbf16ps`), the
    scale applied in fp32; elsewhere, and past the 1024 group scales a block stages, it widens
    them for the fp32 loop. Either way the weight is not rounded: every output is within one bf16
    step of the fp32 GEMV's of the widened rows rounded once, and fewer than 5 % differ at all (the
    sums run in another order);
    1-16 rows, channels not a multiple of the block of 4."""
    g = torch.Generator().manual_seed(23)
    n, group = 4 * 9 + 3, 32
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scale = (torch.rand(n, k // group, generator=g) * 0.01 + 1e-4).half()
    b = torch.randn(n, generator=g).bfloat16()
    for rows in (1, 2, 3, 4, 5, 7, 16):
        x = torch.randn(rows, k, generator=g).bfloat16()
        ours = torch.ops.iq_onednn.woq_linear(x, w, scale, b, 1)
        widened = torch.ops.iq_onednn.woq_linear(x.float(), w, scale, b.float(), 1)
        assert ours.dtype == torch.bfloat16
        ulp = (widened.abs().float() * 2 ** -7).clamp_min(1e-30)  # one bf16 step at each value
        off = (ours.float() - widened.bfloat16().float()).abs()
        assert (off <= ulp).all() and (off > 0).float().mean() < 0.05, (rows, off.max(), (off > 0).float().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["int8-groups", "int4"])
def test_a_decode_rows_result_does_not_depend_on_its_batch(dtype, kind):
    """A decode step at batch 2-16 reads the weight once for all rows (woq_gemv.h's tiles of two
    rows, a last odd row alone): each row's output is bitwise what it gets alone, so a batch
    decodes each of its sequences as batch 1 would; channels not a multiple of the block of 4 and
    a 640 input (group counts 16 + 4) included."""
    g = torch.Generator().manual_seed(16)
    n, k, group = 4 * 37 + 3, 640, 32
    if kind == "int8-groups":
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        w_scale = torch.rand(n, k // group, generator=g) * 0.01 + 0.001
        b = torch.randn(n, generator=g).to(dtype)

        def op(x):
            return torch.ops.iq_onednn.woq_linear(x, w, w_scale, b, 1)
    else:
        q, scale, zp, _ = _int4_weight(n, k, group, seed=17)
        pairs = int4pack.scale_zeros(E, scale, zp, n, k, group, dtype, channels_first=True)
        packed, b = native.woq_int4_pack(E, q, n, k), torch.randn(n, generator=g).to(dtype)

        def op(x):
            return torch.ops.iq_onednn.woq_int4_linear(x, packed, pairs, group, b)
    for rows in (2, 3, 5, 16):
        x = torch.randn(rows, k, generator=g).to(dtype)
        together = op(x)
        assert together.shape == (rows, n) and together.dtype == dtype
        alone = torch.cat([op(x[r:r + 1]) for r in range(rows)])
        assert torch.equal(together, alone), f"{rows} rows: {(together - alone).abs().max()}"


def test_the_bf16_decode_row_is_the_fp32_gemv_rounded_once():
    """bf16 in and out of the GEMV (no conversions around it): bitwise the fp32 GEMV of the widened
    row and bias, its output rounded to bf16 once; with and without a bias, a bf16 or fp32 bias."""
    g = torch.Generator().manual_seed(11)
    n, k = 4 * 37 + 3, 640
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w_scale = torch.rand(n, generator=g) * 0.01 + 0.001
    x = torch.randn(1, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16()
    for bias in (b, b.float(), None):
        out = torch.ops.iq_onednn.woq_linear(x, w, w_scale, bias, 1)
        widened = torch.ops.iq_onednn.woq_linear(x.float(), w, w_scale, None if bias is None else bias.float(), 1)
        assert out.dtype == torch.bfloat16 and torch.equal(out, widened.bfloat16())


def _huge_pages_under(address: int) -> int:
    """kB of 2 MB pages in this process's mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return 0


def _collapse_available() -> bool:
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    release = tuple(int(v) for v in os.uname().release.split(".")[:2] if v.isdigit())
    return "[never]" not in mode and release >= (6, 1)


@pytest.mark.skipif(not _collapse_available(), reason="needs transparent huge pages and MADV_COLLAPSE (Linux 6.1+)")
def test_the_decode_row_moves_its_weight_into_huge_pages():
    """The GEMV's weight is streamed from DRAM every decode step: its first call asks for 2 MB
    pages on it (woq_gemv.h), which read faster than 4 KB ones; the values stay the same."""
    g = torch.Generator().manual_seed(12)
    n, k = 16384, 640  # 10 MB: several whole 2 MB blocks
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w_scale = torch.rand(n, generator=g) * 0.01 + 0.001
    x = torch.randn(1, k, generator=g)
    before = w.clone()
    out = torch.ops.iq_onednn.woq_linear(x, w, w_scale, None, 1)
    assert _huge_pages_under(w.data_ptr() + w.numel() // 2) >= 2048
    assert torch.equal(w, before)
    ref = torch.nn.functional.linear(x, w.float() * w_scale[:, None])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.skipif(not _collapse_available(), reason="needs transparent huge pages and MADV_COLLAPSE (Linux 6.1+)")
def test_a_new_weight_where_an_old_one_was_is_moved_into_huge_pages_too():
    """Weights are remembered by storage, not address: a second weight on memory an earlier one
    used (in 4 KB pages again) is asked into 2 MB pages at its first call as well."""
    import mmap

    n, k = 16384, 640
    buf = mmap.mmap(-1, n * k + (4 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = _address_of(buf)
    offset = (-base) % (2 << 20)  # the weight starts on a 2 MB boundary
    x, w_scale = torch.randn(1, k), torch.full((n,), 0.01)

    def weight():
        return torch.frombuffer(buf, dtype=torch.int8, count=n * k, offset=offset).view(n, k)

    first = weight()
    first.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    torch.ops.iq_onednn.woq_linear(x, first, w_scale, None, 1)
    assert _huge_pages_under(first.data_ptr() + n * k // 2) >= 2048
    del first
    buf.madvise(mmap.MADV_NOHUGEPAGE)  # back into 4 KB pages, as fresh memory would be
    buf.madvise(mmap.MADV_DONTNEED)
    second = weight()
    second.copy_(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    assert _huge_pages_under(second.data_ptr() + n * k // 2) == 0
    out = torch.ops.iq_onednn.woq_linear(x, second, w_scale, None, 1)
    assert _huge_pages_under(second.data_ptr() + n * k // 2) >= 2048
    ref = torch.nn.functional.linear(x, second.float() * w_scale[:, None])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    del second


def _address_of(buf) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def test_weight_only_linear_refuses_what_it_does_not_compute():
    w, s = torch.zeros(8, 16, dtype=torch.int8), torch.ones(8)
    with pytest.raises(RuntimeError, match="float32 or bfloat16 activations"):
        torch.ops.iq_onednn.woq_linear(torch.zeros(2, 16, dtype=torch.float16), w, s, None, 1)
    with pytest.raises(RuntimeError, match="one weight scale per output channel"):
        torch.ops.iq_onednn.woq_linear(torch.zeros(2, 16), w, torch.ones(1), None, 1)
    with pytest.raises(RuntimeError, match="int8 \\[out, in\\] weight"):
        torch.ops.iq_onednn.woq_linear(torch.zeros(2, 15), w, s, None, 1)
    for groups in (torch.ones(8, 3), torch.ones(4, 1), torch.ones(8, 4)):  # 16 / 3; rows; groups of 4
        with pytest.raises(RuntimeError, match="per group \\[out, in / group\\] with the group a multiple of 32"):
            torch.ops.iq_onednn.woq_linear(torch.zeros(2, 16), w, groups, None, 1)


# --- weight-only int4 linear --------------------------------------------------------------------


def _int4_weight(n, k, group, seed):
    """Group-wise 4-bit q in [-8, 7] as convert_pt2e keeps it ([N * K / group, group] int8), its
    scales and zero points, and the dequantized [N, K] weight."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n * k // group, group), dtype=torch.int8, generator=g)
    scale = torch.rand(n * k // group, generator=g) * 0.05 + 0.01
    zp = torch.randint(-8, 8, (n * k // group,), generator=g)
    return q, scale, zp, ((q.float() - zp[:, None]) * scale[:, None]).reshape(n, k)


def _ours_and_torchs_int4(x, q, scale, zp, n, k, group, bias):
    dtype = x.dtype
    pairs = int4pack.scale_zeros(E, scale, zp, n, k, group, dtype, channels_first=True)
    ours = native.woq_int4_linear(E, x, native.woq_int4_pack(E, q, n, k), pairs, group, bias)
    theirs = None
    if int4pack.supports(n, k, group):
        theirs = int4pack.mm(E, x.reshape(-1, k), int4pack.pack(E, q, n, k), group,
                             int4pack.scale_zeros(E, scale, zp, n, k, group, dtype)).reshape(ours.shape)
        if bias is not None:
            theirs = theirs + bias.to(dtype)
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# group counts (K / group): 20 = 16 + 4 (a 640 input), 29 = 16 + 8 + 4 + 1 (every step of the bf16
# loop's scale preparation), 4, 4, 3
@pytest.mark.parametrize("n,k,group", [(4 * 37 + 3, 640, 32), (32, 928, 32), (48, 256, 64), (16, 512, 128), (5, 96, 32)],
                         ids=["tail-channels", "every-group-step", "g64", "g128", "few-channels"])
@pytest.mark.parametrize("x_shape", [(1,), (1, 1), (7,), (2, 3), (17,)], ids=["decode_row", "decode_row_3d", "rows", "3d", "prompt"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_weight_only_int4_is_the_linear_on_the_dequantized_weight(dtype, n, k, group, x_shape, bias):
    """Up to 16 rows (our GEMV, native/woq_int4.h: output channels not a multiple of its block of
    4 included) and more (a prompt: the dequantized weight through the float GEMM): the linear on the
    dequantized weight within fp32 / bf16 rounding, and so torch's int4 GEMM on the same weight."""
    q, scale, zp, dequantized = _int4_weight(n, k, group, seed=13)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(*x_shape, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    ours, theirs = _ours_and_torchs_int4(x, q, scale, zp, n, k, group, b)
    # bf16: the (scale, zero) pairs rounded to bf16, as torch's op takes them, make the weight
    w = dequantized if dtype is torch.float32 else (
        q.float() * scale.bfloat16().float()[:, None] + (-zp * scale).bfloat16().float()[:, None]).reshape(n, k)
    ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert ours.shape == (*x_shape, n) and ours.dtype == dtype
    tol = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    if theirs is not None:
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=2 * tol, atol=2 * tol * ref.abs().max().item())


def test_weight_only_int4_refuses_what_it_does_not_compute():
    q, scale, zp, _ = _int4_weight(16, 64, 32, seed=15)
    pairs = int4pack.scale_zeros(E, scale, zp, 16, 64, 32, torch.float32, channels_first=True)
    packed = native.woq_int4_pack(E, q, 16, 64)
    op = torch.ops.iq_onednn.woq_int4_linear
    with pytest.raises(RuntimeError, match="float32 or bfloat16 activations"):
        op(torch.zeros(1, 64, dtype=torch.float16), packed, pairs, 32, None)
    with pytest.raises(RuntimeError, match="uint8 \\[out, in / 2\\] packed weight"):
        op(torch.zeros(1, 62), packed, pairs, 32, None)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        op(torch.zeros(1, 64), packed, pairs, 16, None)
    with pytest.raises(RuntimeError, match="in the input's dtype"):
        op(torch.zeros(1, 64, dtype=torch.bfloat16), packed, pairs, 32, None)


def test_weight_only_probe_runs_real_tensors_inside_a_compile():
    """The passes ask it while Inductor's fake mode is active (a fuzzer finding: its check ran
    outside the real-tensor scope and the compile crashed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert probe.weight_only_linear_builds.__wrapped__(torch.float32)


def test_the_probes_load_our_kernel_layer_before_they_answer():
    """Their answers are cached for the process: one asked before the layer loaded said no, and
    the weight-only rule then refused every linear of that process (a unit test run alone)."""
    code = ("import torch\nfrom inductor_quant.kernels import probe\n"
            "print(probe.weight_only_linear_builds(torch.float32), probe.attention_builds(torch.float32))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"], out  # fp32 builds from AVX2 on: every CPU we support


# ----------------------------------------------------------------------------- attention

MASKS = {  # (shape of the mask as the model holds it, how it is laid out), for B=2, H=3, S=10
    "none": None,
    "key-padding": (2, 1, 1, 10),
    "per-query": (10, 10),
    "full": (2, 3, 10, 10),
    "expanded": "expanded",  # [S, S] expanded to [B, H, S, S]: stride-0 dims
}


def _attention_inputs(dtype, mask_kind, seed=0):
    """q, k, v as slices of one merged [B, S, 3 * H * D] projection, viewed as [B, H, S, D]
    (the layout our Q/K/V merge gives attention), and an additive mask."""
    g = torch.Generator().manual_seed(seed)
    b, h, s, d = 2, 3, 10, 8
    qkv = torch.randn(b, s, 3 * h * d, generator=g).to(dtype)
    q, k, v = (qkv[..., i * h * d:(i + 1) * h * d].view(b, s, h, d).permute(0, 2, 1, 3) for i in range(3))
    shape = MASKS[mask_kind]
    if shape is None:
        mask = None
    elif shape == "expanded":
        mask = torch.randn(s, s, generator=g).expand(b, h, s, s)
    else:
        mask = torch.randn(*shape, generator=g)
    return q, k, v, mask


def _attention_reference(q, k, v, mask, scale):
    scores = q.double() @ k.double().transpose(-2, -1) * scale
    if mask is not None:
        scores = scores + mask.double()
    return scores.softmax(-1) @ v.double()


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_is_softmax_of_scaled_scores_times_v(dtype, mask_kind):
    if dtype == torch.bfloat16 and not cpu_info().bf16_native:
        pytest.skip("bf16 attention is routed only where bf16 is native (passes/attention.py)")
    q, k, v, mask = _attention_inputs(dtype, mask_kind)
    scale = 0.3
    ours = torch.ops.iq_onednn.attention(q, k, v, mask, scale)
    theirs = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                        scale=scale)[0]
    want = _attention_reference(q, k, v, mask, scale)
    # torch's flash attention's output layout, so the permute + reshape after it stays a view
    assert ours.dtype == dtype and ours.shape == theirs.shape and ours.stride() == theirs.stride()
    ours_err = (ours.double() - want).abs().max().item()
    theirs_err = (theirs.double() - want).abs().max().item()
    if dtype == torch.float32:
        assert ours_err < 1e-5, ours_err
    else:  # one bf16 rounding of the output, and of the probabilities before the second matmul
        assert ours_err <= max(2 * theirs_err, 2 ** -7 * want.abs().max().item()), (ours_err, theirs_err)


def _own_bf16_attention_runs_here() -> bool:
    try:
        torch.ops.iq_onednn.attention_kernel("own")
        return True
    except RuntimeError:
        return False
    finally:
        torch.ops.iq_onednn.attention_kernel("auto")


BF16_ATTENTION_SHAPES = {  # B, H, Sq, Sk, D, Dv: BERT's heads; a tail of every block (37 = 4 x 8 + 4 + 1
    # rows, an odd D, Dv = 2 x 32 + 16 + 5); the fuzzer's small odd heads; one key; one head (its rows
    # split between threads); below 32 rows K and V are read in place (`few_rows`): a decode step (one
    # query), Gemma-3's four query heads of one KV head, and 31 rows = 3 x 8 + 4 + 2 + 1 with an odd
    # D (a masked tail load), an odd key count (the last pair half empty) and Dv = 64 + 16 + 5
    "bert-heads": (2, 2, 128, 128, 64, 64), "tails": (2, 3, 37, 37, 7, 85), "small-heads": (3, 2, 128, 128, 9, 9),
    "one-key": (3, 4, 33, 1, 8, 32), "one-head": (1, 1, 300, 300, 64, 64), "decode": (1, 2, 1, 300, 256, 256),
    "gqa-decode": (2, 1, 4, 75, 256, 256), "few-rows-tails": (1, 3, 31, 45, 37, 85), "few-rows-one-key": (2, 2, 3, 1, 8, 16)}
BF16_ATTENTION_MASKS = {  # (shape, dtype) for [B, H, Sq, Sk]
    "none": None, "key-padding-f32": ("key-padding", torch.float32), "full-bf16": ("full", torch.bfloat16),
    "per-key-row-bf16": ("row", torch.bfloat16), "per-query-f32": ("query", torch.float32)}


@pytest.mark.parametrize("mask_kind", BF16_ATTENTION_MASKS)
@pytest.mark.parametrize("shape", BF16_ATTENTION_SHAPES)
@pytest.mark.parametrize("kernel", ["onednn", "own"])
def test_both_bf16_attention_kernels_are_attention(kernel, shape, mask_kind):
    """bf16 attention runs our one-pass kernel (kernels/native/attention_bf16.h) where the CPU has
    AVX512-BF16 and no AMX, oneDNN's primitives elsewhere: both within bf16 rounding of attention
    in fp64 (as torch's flash attention is), on shapes with a tail in every block and masks of
    every broadcast kind and dtype."""
    if kernel == "own" and not _own_bf16_attention_runs_here():
        pytest.skip("our bf16 attention needs AVX512-BF16 (and torch's AVX-512 capability)")
    b, h, sq, sk, d, dv = BF16_ATTENTION_SHAPES[shape]
    g = torch.Generator().manual_seed(sq * 1000 + sk)
    q = torch.randn(b, sq, h, d, generator=g).bfloat16().transpose(1, 2)  # [B, H, S, D] views of [B, S, H, D]
    k = torch.randn(b, sk, h, d, generator=g).bfloat16().transpose(1, 2)
    v = torch.randn(b, sk, h, dv, generator=g).bfloat16().transpose(1, 2)
    mask = None
    if BF16_ATTENTION_MASKS[mask_kind]:
        form, dtype = BF16_ATTENTION_MASKS[mask_kind]
        mask_shape = {"key-padding": (b, 1, 1, sk), "full": (b, h, sq, sk), "row": (1, sk), "query": (sq, 1)}[form]
        mask = (torch.randn(*mask_shape, generator=g) * 3).to(dtype)
    scale = d ** -0.5
    torch.ops.iq_onednn.attention_kernel(kernel)
    try:
        assert torch.ops.iq_onednn.vector_code().split()[-1] == f"attention_bf16={kernel}"
        ours = torch.ops.iq_onednn.attention(q, k, v, mask, scale)
    finally:
        torch.ops.iq_onednn.attention_kernel("auto")
    # torch's own bf16 attention where its flash kernel takes the shapes, its math one elsewhere
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    want = _attention_reference(q, k, v, mask, scale)
    assert ours.dtype == torch.bfloat16 and ours.shape == theirs.shape
    assert ours.transpose(1, 2).is_contiguous()  # [B, S, H, D] memory, as torch's flash attention returns
    ours_err = (ours.double() - want).abs().max().item()
    theirs_err = (theirs.double() - want).abs().max().item()
    assert ours_err <= max(2 * theirs_err, 2 ** -7 * want.abs().max().item()), (ours_err, theirs_err)


CACHE_MASKS = {  # [Sq, Sk] over a 300-slot cache: which keys each query row sees
    "prompt-chunk": lambda sq, sk: torch.arange(sk)[None, :] <= torch.arange(40, 40 + sq)[:, None],  # causal, at 40
    "sliding-window": lambda sq, sk: ((torch.arange(sk)[None, :] <= torch.arange(150, 150 + sq)[:, None])
                                      & (torch.arange(150, 150 + sq)[:, None] - torch.arange(sk)[None, :] < 64)),
    "nothing-visible": lambda sq, sk: torch.zeros(sq, sk, dtype=torch.bool),
    "every-key": lambda sq, sk: torch.ones(sq, sk, dtype=torch.bool),
}


@pytest.mark.parametrize("mask_kind", CACHE_MASKS)
@pytest.mark.parametrize("sq", [1, 48], ids=["decode", "prompt"])
@pytest.mark.parametrize("kernel", ["fp32", "onednn", "own"])
def test_attention_over_a_longer_cache_skips_the_keys_no_row_sees(kernel, sq, mask_kind):
    """A decoder's prompt chunk or decode step attends over its whole KV cache with -inf on the
    slots not written yet (or out of its window). The keys that every row masks are skipped
    (kernels/native/onednn_direct.cpp, `visible_keys`): the result is attention over all keys,
    within float rounding; where no row sees a key, 0 (torch's op's answer); both bf16 kernels."""
    dtype = torch.float32 if kernel == "fp32" else torch.bfloat16
    if dtype == torch.bfloat16 and not cpu_info().bf16_native:
        pytest.skip("bf16 attention is routed only where bf16 is native (passes/attention.py)")
    if kernel == "own" and not _own_bf16_attention_runs_here():
        pytest.skip("our bf16 attention needs AVX512-BF16 (and torch's AVX-512 capability)")
    b, h, sk, d = 1, 4, 300, 64
    g = torch.Generator().manual_seed(sq)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for n in (sq, sk, sk))
    seen = CACHE_MASKS[mask_kind](sq, sk)
    mask = torch.zeros(sq, sk).masked_fill(~seen, float("-inf")).to(dtype)
    torch.ops.iq_onednn.attention_kernel("auto" if kernel == "fp32" else kernel)
    try:
        ours = torch.ops.iq_onednn.attention(q, k, v, mask, d ** -0.5)
    finally:
        torch.ops.iq_onednn.attention_kernel("auto")
    if not seen.any():
        assert torch.equal(ours, torch.zeros_like(ours))
        return
    want = _attention_reference(q, k, v, mask, d ** -0.5)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d ** -0.5)
    ours_err = (ours.double() - want).abs().max().item()
    if dtype == torch.float32:
        assert ours_err < 1e-5, ours_err
    else:
        theirs_err = (theirs.double() - want).abs().max().item()
        assert ours_err <= max(2 * theirs_err, 2 ** -7 * want.abs().max().item()), (ours_err, theirs_err)


def test_attention_of_new_shapes_and_threads():
    """A primitive per shape and thread count: a new sequence length or batch is computed right,
    and so is the first shape again after them."""
    q, k, v, _ = _attention_inputs(torch.float32, "none")
    first = torch.ops.iq_onednn.attention(q, k, v, None, 0.5)
    for b, s in ((1, 10), (2, 7), (3, 1)):
        g = torch.Generator().manual_seed(b * 100 + s)
        x = [torch.randn(b, 3, s, 8, generator=g) for _ in range(3)]
        got = torch.ops.iq_onednn.attention(*x, None, 0.5)
        assert (got.double() - _attention_reference(*x, None, 0.5)).abs().max() < 1e-5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # another primitive (other blocking): the same up to rounding
        assert (torch.ops.iq_onednn.attention(q, k, v, None, 0.5) - first).abs().max() < 1e-6
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.ops.iq_onednn.attention(q, k, v, None, 0.5), first)


@pytest.mark.parametrize("mask_kind", ["none", "causal"])
def test_attention_of_batch_one_with_any_batch_stride(mask_kind):
    """Inductor gives the size-1 batch of a batch-1 slice any stride (0 seen, fuzz seed 13): the
    values are the same whatever it is (oneDNN read them wrong with a 0 batch stride)."""
    g = torch.Generator().manual_seed(13)
    buffers = [torch.randn(1, 3, 8, generator=g) for _ in range(3)]  # [B, S, H * D], 4 heads of 2
    mask = torch.triu(torch.full((3, 3), float("-inf")), 1) if mask_kind == "causal" else None
    q, k, v = (b.as_strided((1, 4, 3, 2), (24, 2, 8, 1)) for b in buffers)
    want = _attention_reference(q, k, v, mask, 0.5)
    for batch_stride in (0, 24, 10**6):
        x = [t.as_strided(t.shape, (batch_stride, *t.stride()[1:])) for t in (q, k, v)]
        got = torch.ops.iq_onednn.attention(*x, mask, 0.5)
        assert (got.double() - want).abs().max() < 1e-5, batch_stride


def test_attention_refuses_what_it_does_not_compute():
    q, k, v, _ = _attention_inputs(torch.float32, "none")
    with pytest.raises(RuntimeError, match="all float32 or all bfloat16"):
        torch.ops.iq_onednn.attention(q, k.double(), v, None, 0.5)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        torch.ops.iq_onednn.attention(q, k, v, torch.zeros(4, 10), 0.5)
    with pytest.raises(RuntimeError, match="additive mask"):
        torch.ops.iq_onednn.attention(q, k, v, torch.zeros(10, 10, dtype=torch.bool), 0.5)


def _layer_norm_reference(x, weight, bias, eps):
    return torch.layer_norm(x.double(), x.shape[-1:], None if weight is None else weight.double(),
                            None if bias is None else bias.double(), eps)


@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8], ids=["u8", "s8"])
def test_layer_norm_quant_is_layer_norm_then_quantize(dtype, affine):
    """The float output within float rounding of the layer norm, the quantized one within one step
    of quantizing the exact layer norm (and equal to quantizing our own float output but for values
    on a rounding edge); rows of 768 (BERT's) and 10 (a tail shorter than any vector)."""
    g = torch.Generator().manual_seed(7)
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    zp = 120 if dtype == torch.uint8 else -3
    for shape in ((3, 50, 768), (7, 10)):
        x = torch.randn(*shape, generator=g) * 3 + 1
        weight = torch.randn(shape[-1], generator=g) if affine != "none" else None
        bias = torch.randn(shape[-1], generator=g) if affine == "weight_bias" else None
        y, q = torch.ops.iq_onednn.layer_norm_quant(x, weight, bias, 1e-5, 0.01, zp, lo, hi, dtype, True)
        want = _layer_norm_reference(x, weight, bias, 1e-5)
        assert y.dtype == torch.float32 and q.dtype == dtype and y.shape == q.shape == x.shape
        assert (y.double() - want).abs().max() < 1e-5
        exact = torch.clamp(torch.round(want / 0.01) + zp, lo, hi)
        assert (q.double() - exact).abs().max() <= 1
        of_ours = torch.clamp(torch.round(y * torch.tensor(1 / 0.01)) + zp, lo, hi)
        assert (q.float() != of_ours).float().mean() < 1e-3
        assert q.min() >= lo and q.max() <= hi and (q == lo).any() and (q == hi).any()  # both clamps reached
        y_unread, q_again = torch.ops.iq_onednn.layer_norm_quant(x, weight, bias, 1e-5, 0.01, zp, lo, hi, dtype, False)
        assert y_unread.numel() == 0 and torch.equal(q_again, q)


def test_layer_norm_quant_refuses_what_it_does_not_compute():
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="a float32 input"):
        torch.ops.iq_onednn.layer_norm_quant(x.bfloat16(), None, None, 1e-5, 0.1, 0, 0, 255, torch.uint8, True)
    with pytest.raises(RuntimeError, match="uint8 or int8"):
        torch.ops.iq_onednn.layer_norm_quant(x, None, None, 1e-5, 0.1, 0, 0, 255, torch.int32, True)
    with pytest.raises(RuntimeError, match="weight of the normalized size"):
        torch.ops.iq_onednn.layer_norm_quant(x, torch.ones(5), None, 1e-5, 0.1, 0, 0, 255, torch.uint8, True)


def test_our_vector_loops_follow_torchs_cpu_capability():
    """Our GEMV and quantized layer norm pick their loops (AVX-512, AVX2, plain C++) as ATen does
    (`ATEN_CPU_CAPABILITY` caps both), and bf16 attention our kernel only at AVX-512: on a newer CPU
    only a capped process runs the narrower loops and oneDNN's attention, so each capped process
    runs this file's tests of those kernels again."""
    _, hardware = cpu_features()  # the CPU's own flags: an ONEDNN_MAX_CPU_ISA cap changes nothing here
    aten = torch.backends.cpu.get_cpu_capability()
    gemv, norm = {"AVX512": ("avx512", "avx512"), "AVX2": ("avx2", "avx2")}.get(aten, ("scalar", "plain"))
    own_attention = aten == "AVX512" and "avx512_bf16" in hardware and "amx_bf16" not in hardware
    assert _own_bf16_attention_runs_here() == (aten == "AVX512" and "avx512_bf16" in hardware)
    default = torch.ops.iq_onednn.vector_code()
    pairs = "avx512_bf16" if aten == "AVX512" and "avx512_bf16" in hardware else gemv  # the bf16 pair loops
    assert default == (f"woq_gemv={pairs} woq_int4={pairs} layer_norm_quant={norm} "
                       f"attention_bf16={'own' if own_attention else 'onednn'}"), default
    tests = ("layer_norm_quant or decode_rows or rounded_once or dequantized_weight or bf16_attention_kernels"
             " or weight_only_int4 or bf16_rows or fp16_group_scales")
    for cap, loops in (("avx2", "avx2"), ("default", None)):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        code = "import torch; from inductor_quant.kernels import native; native.load(); print(torch.ops.iq_onednn.vector_code())"
        out = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == [f"woq_gemv={loops or 'scalar'}", f"woq_int4={loops or 'scalar'}",
                                      f"layer_norm_quant={loops or 'plain'}",
                                      "attention_bf16=onednn"], out
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", tests],
                             env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
        assert run.returncode == 0 and " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("kernel", ["onednn", "own"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_query_row_masked_at_every_key_attends_to_nothing(kernel, dtype):
    """torch's attention gives 0 for a row whose additive mask is -inf at every key; oneDNN's
    softmax gave NaN there (0 / 0) and our bf16 kernel the plain average of V. Both now give 0;
    the other rows are untouched. 40 queries: our kernel's (it takes 32 or more)."""
    if dtype == torch.bfloat16 and not cpu_info().bf16_native:
        pytest.skip("bf16 attention is routed only where bf16 is native")
    if kernel == "own" and (dtype == torch.float32 or not _own_bf16_attention_runs_here()):
        pytest.skip("our one-pass kernel is for bf16 on AVX512-BF16")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 40, 16, generator=g).to(dtype) for _ in range(3))
    # per batch, broadcast, per head (row 3 fully masked in head 1 only), and a bf16 mask
    for mask in (torch.zeros(2, 1, 40, 40), torch.zeros(40, 40), torch.zeros(1, 2, 40, 40),
                 torch.zeros(40, 40, dtype=torch.bfloat16)):
        per_head = mask.dim() == 4 and mask.shape[1] == 2
        heads = [1] if per_head else [0, 1]
        if per_head:
            mask[:, 1, 3, :] = float("-inf")
        else:
            mask[..., 3, :] = float("-inf")
        mask[..., 7, :5] = float("-inf")  # partly masked: a normal row
        torch.ops.iq_onednn.attention_kernel(kernel)
        try:
            ours = torch.ops.iq_onednn.attention(q, k, v, mask, 0.25)
        finally:
            torch.ops.iq_onednn.attention_kernel("auto")
        want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                attn_mask=mask.double(), scale=0.25)
        assert torch.equal(ours[:, heads, 3], torch.zeros_like(ours[:, heads, 3]))
        assert not ours.isnan().any()
        tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * want.abs().max().item()
        assert (ours.double() - want).abs().max() <= tol
