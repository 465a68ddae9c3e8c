"""Group-wise (int4) weight observers and what convert makes of them: the min/max fit with integer
zero points, and the least-squares fit with float zero points (zero_point_domain="float")."""

import pytest
import torch
from torch import nn

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.quantizer import X86InductorQuantizer, get_x86_inductor_linear_weight_only_int4_config
from inductor_quant.quantizer.llm_observers import GroupwiseLeastSquaresObserver, GroupwiseMinMaxObserver, fp16_up

GROUP = 32


def _observe(cls, w):
    obs = cls(group_size=GROUP, dtype=torch.int8, quant_min=-8, quant_max=7, qscheme=torch.per_channel_affine,
              eps=2**-12)
    obs(w)
    return obs.calculate_qparams()


def _rebuilt(w, scale, zp):
    """The weight as its 4-bit groups give it back: (round(w / s + zp) clamped - zp) * s."""
    g = w.reshape(-1, GROUP)
    q = torch.clamp(torch.round(g / scale[:, None] + zp[:, None]), -8, 7)
    return ((q - zp[:, None]) * scale[:, None]).reshape(w.shape)


def test_the_least_squares_fit_recovers_weights_that_lie_on_a_4bit_grid():
    """Weights that are exactly 16 levels per group (as a 4-bit model's dequantized ones are) come
    back exactly; the min/max fit with an integer zero point shifts them by up to half a step."""
    torch.manual_seed(0)
    scale = torch.rand(16 * 4, 1) + 0.1
    offset = -torch.randint(1, 15, (16 * 4, 1)) * scale + torch.rand(16 * 4, 1) * scale * 0.9  # not on a step
    q = torch.randint(0, 16, (16 * 4, GROUP)).float()
    q[:, 0], q[:, 1] = 0, 15  # each group spans all 16 levels
    w = (q * scale + offset).reshape(16, 4 * GROUP)
    s, zp = _observe(GroupwiseLeastSquaresObserver, w)
    torch.testing.assert_close(_rebuilt(w, s, zp), w, rtol=0, atol=1e-5)
    s, zp = _observe(GroupwiseMinMaxObserver, w)
    assert (_rebuilt(w, s, zp) - w).abs().max() > 0.05


@pytest.mark.parametrize("weights", ["normal", "heavy_tailed"])
def test_the_least_squares_fit_has_a_smaller_error_than_min_max(weights):
    torch.manual_seed(0)
    w = torch.randn(64, 256) if weights == "normal" else torch.distributions.StudentT(3.0).sample((64, 256))
    error = {cls: (_rebuilt(w, *_observe(cls, w)) - w).square().sum()
             for cls in (GroupwiseMinMaxObserver, GroupwiseLeastSquaresObserver)}
    assert error[GroupwiseLeastSquaresObserver] < 0.85 * error[GroupwiseMinMaxObserver], error


def test_float_zero_points_stay_in_the_integer_range():
    """A group of only positive weights would fit best with an offset above 0; the fit keeps the
    zero point within [-8, 7], the range every consumer of a zero point takes."""
    torch.manual_seed(0)
    w = torch.rand(8, 4 * GROUP) + 1.0
    s, zp = _observe(GroupwiseLeastSquaresObserver, w)
    assert zp.dtype is torch.float32 and zp.min() >= -8 and zp.max() <= 7 and bool((s > 0).all())


def _prepared(model, x):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_x86_inductor_linear_weight_only_int4_config(GROUP, zero_point_domain="float"))
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    prepared(x)
    return prepared


def test_convert_stores_float_zero_points_and_quantizes_with_them():
    torch.manual_seed(0)
    model, x = nn.Linear(64, 16).eval(), torch.randn(3, 64)
    converted = convert_pt2e(_prepared(model, x))
    dq = next(n for n in converted.graph.nodes if n.target is torch.ops.quantized_decomposed.dequantize_per_channel.default)
    q, s, zp = (getattr(converted, a.target) for a in dq.args[:3])
    assert q.dtype is torch.int8 and zp.dtype is torch.float32 and bool((zp != zp.round()).any())
    # the stored values are round(w / s + zp): the nearest level of each group's fitted grid
    torch.testing.assert_close(q.float(), torch.clamp(torch.round(model.weight.reshape(-1, GROUP) / s[:, None] + zp[:, None]), -8, 7))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), nn.functional.linear(x, _rebuilt(model.weight, s, zp), model.bias))


def test_float_zero_points_without_folding_are_a_clear_error():
    torch.manual_seed(0)
    model, x = nn.Linear(64, 16).eval(), torch.randn(3, 64)
    with pytest.raises(ValueError, match="fold_quantize=True"):
        convert_pt2e(_prepared(model, x), fold_quantize=False)


def test_the_config_refuses_a_symmetric_float_zero_point_and_unknown_domains():
    with pytest.raises(ValueError, match="asymmetric"):
        get_x86_inductor_linear_weight_only_int4_config(32, symmetric=True, zero_point_domain="float")
    with pytest.raises(ValueError, match="one of"):
        get_x86_inductor_linear_weight_only_int4_config(32, zero_point_domain="fp")
    # the same config object for the same choice, however it is spelled
    assert (get_x86_inductor_linear_weight_only_int4_config(32) is
            get_x86_inductor_linear_weight_only_int4_config(32, symmetric=True))


def test_int8_group_scales_are_fp16_values_at_or_just_above_the_fp32_scale():
    """The group-wise int8 config rounds each scale up to an fp16 value (the kernel streams them
    as fp16, exactly): never below the min/max scale (no weight clipped), at most 2^-10 above it
    in fp16's normal range; a scale beyond fp16's range is kept as it is."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 96, generator=g) * torch.logspace(-3, 1, 48)[:, None]
    exact = GroupwiseMinMaxObserver(group_size=32, qscheme=torch.per_channel_symmetric, quant_min=-127,
                                    quant_max=127, dtype=torch.int8)
    rounded = GroupwiseMinMaxObserver(group_size=32, qscheme=torch.per_channel_symmetric, quant_min=-127,
                                      quant_max=127, dtype=torch.int8, fp16_scales=True)
    exact(w), rounded(w)
    (s, zp), (s16, zp16) = exact.calculate_qparams(), rounded.calculate_qparams()
    assert torch.equal(zp, zp16) and torch.equal(s16.half().float(), s16)
    normal = s >= 2 ** -14
    assert bool((s16 >= s).all()) and 0 < int(normal.sum()) < len(s)
    assert float(((s16 - s) / s)[normal].max()) <= 2 ** -10 and float((s16 - s)[~normal].max()) <= 2 ** -24
    assert int((s16 != s).sum()) > len(s) // 2  # most fp32 scales are not fp16 values
    assert float(fp16_up(torch.tensor([1e5]))) == 1e5
