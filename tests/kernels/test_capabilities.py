"""The post-op capability records (kernels/capabilities.py) against the real kernels, and every
reader of the records agreeing with them: quantizer, passes, builders, references."""

import pytest
import torch

from inductor_quant.kernels import capabilities as C
from inductor_quant.kernels import onednn as K
from inductor_quant.kernels import reference as R
from kernel_helpers import W_MAX, XQ, assert_matches_reference
LAYERS = {  # layer -> (input shape, weight shape, geometry or None for linear)
    "conv1d": ((2, 4, 9), (6, 4, 3), K.ConvGeometry((1,), (1,), (1,), 1)),
    "conv2d": ((1, 4, 7, 7), (6, 4, 3, 3), K.ConvGeometry((1, 1), (1, 1), (1, 1), 1)),
    "conv3d": ((1, 4, 5, 5, 5), (6, 4, 3, 3, 3), K.ConvGeometry((1,) * 3, (1,) * 3, (1,) * 3, 1)),
    "linear": ((3, 8), (6, 8), None),
}
SAMPLE_ARGUMENTS = {"min_val": -0.5, "max_val": 1.5, "slope": 0.1}


def _unary(post: C.PostOp) -> K.Unary:
    return K.Unary(post.attr, tuple(SAMPLE_ARGUMENTS[a] for a in post.arguments), post.algorithm)


OUTPUTS = {"fp32": K.Output(), "bf16": K.Output(torch.bfloat16), "u8": K.Output(torch.uint8, 0.05, 3)}


def _run(layer, unary, out=K.Output()):
    xs, ws, geom = LAYERS[layer]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, xs, dtype=torch.uint8, generator=g)
    w = torch.randint(-W_MAX, W_MAX + 1, ws, dtype=torch.int8, generator=g)
    w_scale, w_zp, b = torch.rand(ws[0], generator=g) * 0.01 + 0.001, torch.zeros(ws[0], dtype=torch.long), torch.randn(ws[0])
    if geom is None:
        packed = K.qlinear_prepack(K.eager, w, list(x.shape))
        return (K.qlinear(K.eager, x, XQ, packed, w_scale, w_zp, b, out, unary),
                lambda: R.qlinear(x, XQ, w, w_scale, w_zp, b, out, unary))
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    packed = K.qconv_prepack(K.eager, w, w_scale, XQ, geom, list(x.shape))
    return (K.qconv(K.eager, x, XQ, packed, w_scale, w_zp, b, geom, out, unary),
            lambda: R.qconv(x, XQ, w, w_scale, w_zp, b, geom, out, unary))


@pytest.mark.parametrize("out", OUTPUTS)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("post", C.POST_OPS, ids=[p.name for p in C.POST_OPS])
def test_record_says_what_the_kernel_takes(post, layer, out):
    """A record's `layers` is exactly where the int8 op accepts the post-op (with an fp32, bf16
    or requantized output alike), and its `math` is what the op computes there."""
    out = OUTPUTS[out]
    if not post.fuses_with(layer):
        with pytest.raises(RuntimeError, match="(?i)unsupported"):
            _run(layer, _unary(post), out)
        return
    got, reference = _run(layer, _unary(post), out)
    assert_matches_reference(got, reference(), out)


def test_quantizer_reports_fusability_from_the_records():
    """The quantizer used to keep its own table, which said conv1d takes hardswish; the kernel
    takes relu only."""
    from inductor_quant.quantizer.aten_ops import UNARY_OPS, onednn_fuses

    for post in C.POST_OPS:
        for layer in LAYERS:
            assert onednn_fuses(layer, post.name) == post.fuses_with(layer)
        for name in post.aten_ops:
            packet, overload = name.split(".")
            assert UNARY_OPS[getattr(getattr(torch.ops.aten, packet), overload)] == post.name
    assert not onednn_fuses("conv1d", "hardswish") and onednn_fuses("conv1d", "relu")
    assert [layer for layer in LAYERS if onednn_fuses(layer, "add")] == ["conv2d", "linear"]


def test_passes_declare_a_fold_for_every_foldable_record():
    import inductor_quant.passes as iq_passes

    ids = set(iq_passes.fusion_ids())
    for post in C.foldable():
        assert {f"post.{post.name}", f"post.{post.name}.bf16"} <= ids
        assert (f"post.binary.{post.name}" in ids) == post.after_add
    assert "post.sigmoid" not in ids  # no int8 op takes it: annotated, never folded


def test_reference_reads_the_records():
    y = torch.linspace(-3, 3, 13)
    for post in C.POST_OPS:
        u = _unary(post)
        torch.testing.assert_close(R.unary(y, u), post.math(y, list(u.scalars)))
    assert R.unary(y, K.Unary()) is y
