"""Each oneDNN builder against its plain-PyTorch reference, on small tensors (no compile)."""

import dataclasses

import pytest
import torch

from inductor_quant.kernels import probe
from inductor_quant.kernels import onednn as K
from inductor_quant.kernels import reference as R
from inductor_quant.kernels.cpu import cpu_info
from kernel_helpers import W_MAX, XQ, assert_matches_reference


E = K.eager
CONV_UNARY = [K.Unary(), K.Unary("relu"), K.Unary("hardtanh", (0.0, 6.0)), K.Unary("hardswish"), K.Unary("swish")]
LINEAR_UNARY = CONV_UNARY + [
    K.Unary("gelu", (), "none"), K.Unary("gelu", (), "tanh"), K.Unary("leaky_relu", (0.1,)), K.Unary("tanh"),
]
OUTPUTS = [K.Output(), K.Output(torch.bfloat16), K.Output(torch.uint8, 0.05, 3), K.Output(torch.int8, 0.05, 0)]


def _ids(xs):
    return [f"{x.name}{'-' + x.algorithm if x.algorithm else ''}" if isinstance(x, K.Unary) else str(x.dtype).split(".")[-1] for x in xs]


def _weights(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-W_MAX, W_MAX + 1, shape, dtype=torch.int8, generator=g)
    return w, torch.rand(shape[0], generator=g) * 0.01 + 0.001, torch.zeros(shape[0], dtype=torch.long), torch.randn(shape[0], generator=g)


def _u8(shape, seed=1):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


CONV_GEOMETRIES = {
    "conv2d": ((2, 4, 7, 7), (6, 4, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
    "conv2d-s2d2": ((1, 4, 9, 9), (6, 4, 3, 3), K.ConvGeometry((2, 2), (2, 2), (2, 2), 1)),
    "conv2d-groups": ((1, 4, 6, 6), (6, 2, 3, 3), K.ConvGeometry((1, 1), (0, 0), (1, 1), 2)),
    "conv2d-depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 4)),
    "conv1d": ((2, 4, 9), (6, 4, 3), K.ConvGeometry((2,), (1,), (1,), 1)),
    "conv3d": ((1, 4, 5, 5, 5), (6, 4, 3, 3, 3), K.ConvGeometry((1,) * 3, (1,) * 3, (1,) * 3, 1)),
}


@pytest.mark.parametrize("geom", CONV_GEOMETRIES, ids=list(CONV_GEOMETRIES))
@pytest.mark.parametrize("out", OUTPUTS, ids=_ids(OUTPUTS))
def test_qconv_geometry(geom, out):
    xs, ws, g = CONV_GEOMETRIES[geom]
    x, (w, w_scale, w_zp, b) = _u8(xs), _weights(ws)
    packed = K.qconv_prepack(E, w, w_scale, XQ, g, x.shape)
    assert_matches_reference(K.qconv(E, x, XQ, packed, w_scale, w_zp, b, g, out), R.qconv(x, XQ, w, w_scale, w_zp, b, g, out), out)


@pytest.mark.parametrize("unary", CONV_UNARY, ids=_ids(CONV_UNARY))
@pytest.mark.parametrize("out", OUTPUTS, ids=_ids(OUTPUTS))
def test_qconv_unary(unary, out):
    xs, ws, g = CONV_GEOMETRIES["conv2d"]
    x, (w, w_scale, w_zp, b) = _u8(xs), _weights(ws)
    packed = K.qconv_prepack(E, w, w_scale, XQ, g, None)
    y = K.qconv(E, x, XQ, packed, w_scale, w_zp, b, g, out, unary)
    assert_matches_reference(y, R.qconv(x, XQ, w, w_scale, w_zp, b, g, out, unary), out)


def test_qconv_tensor_overload():
    xs, ws, g = CONV_GEOMETRIES["conv2d"]
    x, (w, w_scale, w_zp, b) = _u8(xs), _weights(ws)
    tq = K.QParams(torch.tensor(XQ.scale), torch.tensor(XQ.zero_point))
    packed = K.qconv_prepack(E, w, w_scale, XQ, g, None)
    assert_matches_reference(K.qconv(E, x, tq, packed, w_scale, w_zp, b, g), R.qconv(x, XQ, w, w_scale, w_zp, b, g), K.Output())


@pytest.mark.parametrize("relu", [False, True], ids=["sum", "sum-relu"])
@pytest.mark.parametrize("out", [K.Output(), K.Output(torch.uint8, 0.05, 3)], ids=["float32", "uint8"])
def test_qconv_binary_sum(relu, out):
    """`sum` takes an extra input of the output dtype (fp32: scale 1/zp 0; uint8: its own qparams)."""
    xs, ws, g = CONV_GEOMETRIES["conv2d"]
    x, (w, w_scale, w_zp, b) = _u8(xs), _weights(ws)
    shape = (2, 6, 7, 7)
    accum = (_u8(shape, 3) if out.quantized else torch.randn(shape)).contiguous(memory_format=torch.channels_last)
    binary = K.Binary("sum", 1.0, K.QParams(0.04, 5) if out.quantized else K.QParams(1.0, 0), K.Unary("relu" if relu else "none"))
    expected = R.qconv_binary(x, XQ, w, w_scale, w_zp, accum, b, g, out, binary)
    packed = K.qconv_prepack(E, w, w_scale, XQ, g, None)
    assert_matches_reference(K.qconv_binary(E, x, XQ, packed, w_scale, w_zp, accum.clone(), b, g, out, binary), expected, out)


@pytest.mark.parametrize("x_shape", [(5, 8), (3, 5, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("out", OUTPUTS, ids=_ids(OUTPUTS))
def test_qlinear_shapes(x_shape, bias, out):
    x, (w, w_scale, w_zp, b) = _u8(x_shape), _weights((6, 8))
    b = b if bias else None
    packed = K.qlinear_prepack(E, w, x.shape)
    assert_matches_reference(K.qlinear(E, x, XQ, packed, w_scale, w_zp, b, out), R.qlinear(x, XQ, w, w_scale, w_zp, b, out), out)


@pytest.mark.parametrize("unary", LINEAR_UNARY, ids=_ids(LINEAR_UNARY))
@pytest.mark.parametrize("out", [K.Output(), K.Output(torch.uint8, 0.05, 3)], ids=["float32", "uint8"])
def test_qlinear_unary(unary, out):
    x, (w, w_scale, w_zp, b) = _u8((5, 8)), _weights((6, 8))
    packed = K.qlinear_prepack(E, w, None)
    y = K.qlinear(E, x, XQ, packed, w_scale, w_zp, b, out, unary)
    assert_matches_reference(y, R.qlinear(x, XQ, w, w_scale, w_zp, b, out, unary), out)


def test_qlinear_int8_activation_and_tensor_overload():
    x, (w, w_scale, w_zp, b) = _u8((5, 8)), _weights((6, 8))
    s8 = (x.int() - 128).to(torch.int8)
    packed = K.qlinear_prepack(E, w, None)
    xq_s8 = K.QParams(0.02, 0)
    assert_matches_reference(K.qlinear(E, s8, xq_s8, packed, w_scale, w_zp, b), R.qlinear(s8, xq_s8, w, w_scale, w_zp, b), K.Output())
    tq = K.QParams(torch.tensor(0.02), torch.tensor(7))
    assert_matches_reference(K.qlinear(E, x, tq, packed, w_scale, w_zp, b), R.qlinear(x, XQ, w, w_scale, w_zp, b), K.Output())


@pytest.mark.parametrize("name", ["add", "sum"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("out", [K.Output(), K.Output(torch.uint8, 0.05, 3)], ids=["float32", "uint8"])
def test_qlinear_binary(name, relu, out):
    """`sum` with a requantized output adds an extra input of the output's dtype at its own qparams;
    `add` adds a float extra input (what the passes emit for both output kinds)."""
    x, (w, w_scale, w_zp, b) = _u8((3, 5, 8)), _weights((6, 8))
    int8_extra = out.quantized and name == "sum"
    other = _u8((3, 5, 6), 4) if int8_extra else torch.randn(3, 5, 6)
    binary = K.Binary(name, 1.0, K.QParams(0.04, 5) if int8_extra else K.QParams(1.0, 0), K.Unary("relu" if relu else "none"))
    expected = R.qlinear_binary(x, XQ, w, w_scale, w_zp, other, b, out, binary)
    packed = K.qlinear_prepack(E, w, x.shape)
    assert_matches_reference(K.qlinear_binary(E, x, XQ, packed, w_scale, w_zp, other.clone(), b, out, binary), expected, out)


def test_qlinear_binary_add_ignores_an_int8_extra_inputs_qparams():
    """Why the passes never `add` an int8 extra input (probed on torch 2.13): the kernel treats it
    as raw values, so only `sum` (or a dequantized float extra input) is right."""
    x, (w, w_scale, w_zp, b) = _u8((3, 8)), _weights((6, 8))
    other, out = _u8((3, 6), 4), K.Output(torch.uint8, 0.05, 3)
    binary = K.Binary("add", 1.0, K.QParams(0.04, 5))
    got = K.qlinear_binary(E, x, XQ, K.qlinear_prepack(E, w, x.shape), w_scale, w_zp, other.clone(), b, out, binary)
    want = R.qlinear_binary(x, XQ, w, w_scale, w_zp, other, b, out, binary)
    assert (got.int() - want.int()).abs().max() > 1


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(2, 1, 1, 1), (3, 3, 2, 1), (3, 1, 0, 2), (1, 1, 0, 1)])
def test_conv1d_is_its_2d_form_over_height_1(kernel, stride, padding, dilation):
    """The passes emit a 1-D int8 conv as the 2-D conv over height 1 (onednn.lift_1d): it must
    compute exactly what the 1-D call computes. torch's meta kernel gets the 1-D form's length
    wrong (it reads the packed [O, I, 1, k] weight as a 2-D kernel): pinned here, so a torch that
    fixes it shows up."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, xq = torch.randint(0, 256, (2, 16, 20), dtype=torch.uint8), K.QParams(0.02, 10)
    w, w_scale, w_zp = torch.randint(-W_MAX, W_MAX + 1, (8, 16, kernel), dtype=torch.int8), torch.rand(8) * 0.01, torch.zeros(8, dtype=torch.int64)
    geom = K.ConvGeometry((stride,), (padding,), (dilation,), 1)
    packed = K.qconv_prepack(K.eager, w, w_scale, xq, geom, list(x.shape))
    f = K.FusedOp("qconv", x, xq, packed, w_scale, w_zp, None, geom)
    one_d = K.emit(K.eager, f)
    two_d = K.emit(K.eager, K.lift_1d(f, x.unsqueeze(2)))
    assert two_d.shape[2] == 1 and torch.equal(two_d.squeeze(2), one_d)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = K.emit(K.eager, dataclasses.replace(f, x=mode.from_tensor(x), w=mode.from_tensor(packed)))
    if (kernel, stride, padding, dilation) == (2, 1, 1, 1):  # the documented case: 22 instead of 21
        assert fake.shape[-1] == 22 and one_d.shape[-1] == 21


@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((1, 12, 14, 3), (12, 12, 3, 3), (2, 2)),   # strided, output width 1: wrong on torch 2.13
    ((1, 12, 14, 9), (12, 12, 3, 3), (2, 2)),   # output width 4
    ((1, 12, 14, 3), (12, 12, 3, 3), (1, 1)),   # unstrided
])
def test_qconv_probe_agrees_with_the_kernel_on_a_real_batch(x_shape, w_shape, stride):
    """The compile-time probe (batch 1) must give the verdict a real batch of 2 gets."""
    geom = K.ConvGeometry(stride, (0, 0), (1, 1), 1)
    x = torch.randint(0, 256, (2, *x_shape[1:]), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    w, w_scale, w_zp = torch.randint(-W_MAX, W_MAX + 1, w_shape, dtype=torch.int8), torch.rand(12) * 0.01, torch.zeros(12, dtype=torch.int64)
    xq = K.QParams(0.02, 10)
    got = K.qconv(K.eager, x, xq, K.qconv_prepack(K.eager, w, w_scale, xq, geom, list(x.shape)), w_scale, w_zp, None, geom)
    want = R.qconv(x, xq, w, w_scale, w_zp, None, geom)
    exact = bool((got - want).abs().max() <= 1e-3 * want.abs().max() + 1e-4)
    assert probe.qconv_is_exact(x_shape, w_shape, geom, 255, W_MAX) == exact


@pytest.mark.parametrize("name", ["add", "sum"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=["float32", "bfloat16", "uint8"])
@pytest.mark.parametrize("other_dtype", [torch.float32, torch.bfloat16], ids=["fp32_extra", "bf16_extra"])
def test_qlinear_binary_probe_agrees_with_the_kernel(name, out_dtype, other_dtype):
    """The passes fold a float `add`/`sum` into qlinear only where qlinear_binary_builds says the
    kernel exists (without AVX-512 oneDNN has no `add` of a bf16 extra input); where it does, it
    computes right."""
    if name == "sum" and other_dtype != out_dtype:
        pytest.skip("`sum` accumulates into an extra input of the output's dtype")
    x, (w, w_scale, w_zp, b) = _u8((3, 8)), _weights((6, 8))
    out = K.Output(out_dtype, 0.05, 3) if out_dtype == torch.uint8 else K.Output(out_dtype)
    other, binary = torch.randn(3, 6).to(other_dtype), K.Binary(name)
    packed = K.qlinear_prepack(E, w, x.shape)
    if probe.qlinear_binary_builds(out_dtype, other_dtype, name):
        got = K.qlinear_binary(E, x, XQ, packed, w_scale, w_zp, other.clone(), b, out, binary)
        assert_matches_reference(got, R.qlinear_binary(x, XQ, w, w_scale, w_zp, other, b, out, binary), out)
    else:
        with pytest.raises(RuntimeError, match="primitive descriptor"):
            K.qlinear_binary(E, x, XQ, packed, w_scale, w_zp, other.clone(), b, out, binary)
    if other_dtype == torch.float32 or cpu_info().bf16_native:
        assert probe.qlinear_binary_builds(out_dtype, other_dtype, name)