"""Layer b: our phases on small traced graphs, no torch.compile: fast, and they fail next to the rule.

Each variant is traced to the freezing-stage graph, rewritten by `registry.run`, then checked
for the fused ops and run eagerly (the prepack runs at call time here) against the Q/DQ model.
Layer d (coverage) is here too: across these graphs every registered fusion id fires.
"""

import collections

import pytest
import torch

from graph_utils import stage_graph, targets
from qdq_models import CatDim0, dynamic_q_dq, HandSiblings, O_SCALE, QDQLayer, q_dq, X_SCALE, X_ZP
from variants import VARIANTS, left_fp32_for_saturation

import inductor_quant.passes as iq_passes
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.passes import registry
from inductor_quant.passes.fused import record

FIRED = collections.Counter()
FP32_OPS = ("aten.convolution.default", "aten.mm.default", "aten.addmm.default")


def rewrite(model, inputs, bf16=False):
    gm, flat = stage_graph(model, inputs, bf16)
    iq_passes.reset_stats()
    registry.run(gm.graph)
    gm.recompile()
    stats = iq_passes.stats()
    FIRED.update(stats["fused"])
    return gm, flat, stats


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_variant_rewrite(variant, bf16):
    model = QDQLayer(variant).eval()
    inputs = model.example_inputs(bf16)
    gm, flat, stats = rewrite(model, inputs, bf16)
    t = targets(gm)
    if not variant.fuses_here:
        assert left_fp32_for_saturation(stats), stats
    else:
        assert not any(t[op] for op in FP32_OPS), gm.code
        assert stats["unfused"] == []
    expected = dict(variant.bf16_ops if bf16 and variant.bf16_ops else variant.ops) if variant.fuses_here else {}
    fused = [n for n in gm.graph.nodes if record(n) is not None]
    assert collections.Counter(n.target._opname for n in fused) == collections.Counter(
        {op: c for op, c in expected.items()}), gm.code
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref, out = model(*inputs), gm(*flat)
    out = out[0] if isinstance(out, (tuple, list)) else out
    atol = O_SCALE * 1.01 if variant.out_q else (3e-2 if bf16 else 2e-3)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=2e-2 if bf16 else 1e-3)


class TwoBranch(torch.nn.Module):
    """One dq feeding two convs: promotion duplicates it so both fuse."""

    def __init__(self):
        super().__init__()
        from variants import conv
        self.a, self.b = QDQLayer(conv("a")), QDQLayer(conv("b", kernel=1, padding=0))

    def forward(self, x):
        x = q_dq(x, X_SCALE, X_ZP)
        return self.a.tail(x) + self.b.tail(x)


def test_dequant_promotion():
    model = TwoBranch().eval()
    gm, flat, stats = rewrite(model, (torch.randn(2, 8, 7, 7),))
    assert stats["fused"]["dequant.promote"] >= 1
    assert targets(gm)["onednn.qconv_pointwise.default"] + targets(gm)["onednn.qconv2d_pointwise.binary"] == 2
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-1:]), atol=2e-3, rtol=1e-3)


class SharedDynamicDQ(torch.nn.Module):
    """Dynamic quantization: one choose_qparams -> q.tensor -> dq.tensor feeding three linears (q/k/v)."""

    def __init__(self):
        super().__init__()
        from variants import linear
        self.q, self.k, self.v = (QDQLayer(linear(n, x_shape=(2, 3, 16))) for n in "qkv")

    def forward(self, x):
        x = dynamic_q_dq(x)
        return self.q.tail(x) + self.k.tail(x) * self.v.tail(x)


def test_dequant_promotion_dynamic_activation():
    model = SharedDynamicDQ().eval()
    gm, flat, stats = rewrite(model, (torch.randn(2, 3, 16),))
    assert stats["fused"]["dequant.promote"] >= 1 and stats["fused"]["qlinear.dynamic.nd"] == 3, stats
    fused = [n for n in gm.graph.nodes if record(n) is not None]
    # k and v share the runtime qparams and post-ops, so they run as one GEMM (merge.sibling_linears);
    # q carries the add as a binary post-op and stays apart
    assert stats["fused"]["merge.sibling_linears"] == 1, stats
    assert stats["unfused"] == [] and [n.target._opname for n in fused] == ["qlinear_pointwise"] * 2, gm.code
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-1:]), atol=2e-3, rtol=1e-3)


def test_int8_activation_conv_is_shifted_to_uint8():
    from variants import BY_ID
    v = BY_ID["qconv2d.s8"]
    model = QDQLayer(v).eval()
    gm, flat, stats = rewrite(model, model.example_inputs())
    if v.fuses_here:
        assert stats["fused"].get("qconv.s8_to_u8") == 1 and stats["unfused"] == []
    else:  # shifted, int8 activations span 8 bits: without VNNI the conv stays fp32
        assert left_fp32_for_saturation(stats), stats
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-1:]), atol=2e-3, rtol=1e-3)


class NarrowOutput(torch.nn.Module):
    """q/dq over [0, 127] -> linear -> q/dq over [0, 127] with a scale the output exceeds."""

    def __init__(self):
        super().__init__()
        from variants import BY_ID
        self.layer = QDQLayer(BY_ID["qlinear.q.act7"])

    def forward(self, x):
        y = torch.nn.functional.linear(q_dq(x, X_SCALE, 64, hi=127), self.layer.weight(), self.layer.b)
        return q_dq(y, 0.005, 0, hi=127)


def test_narrow_output_range_is_clamped():
    """A requantized output over [0, 127] (reduce_range=True): the op saturates at 255, so the
    fold adds clamp_max(127); outputs beyond the range must match the Q/DQ model."""
    model = NarrowOutput().eval()
    gm, flat, stats = rewrite(model, (torch.randn(4, 16, generator=torch.Generator().manual_seed(1)),))
    assert stats["fused"].get("post.output.quant") == 1 and targets(gm)["aten.clamp_max.default"] == 1, gm.code
    with torch.no_grad():
        ref, out = model(*flat[-1:]), gm(*flat)
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert ref.max() == 127 * 0.005  # the clamp is reached
    torch.testing.assert_close(out, ref, atol=0.005 * 1.01, rtol=1e-3)


INT8_IDS = ("int8.maxpool2d", "int8.cat", "int8.permute", "int8.reshape")


def test_int8_propagation():
    from qdq_models import Int8Ops
    model = Int8Ops().eval()
    gm, flat, stats = rewrite(model, model.example_inputs())
    assert all(stats["fused"].get(i) == 1 for i in INT8_IDS), stats
    t = targets(gm)
    # only the two input quantizes remain; no dequantize of an activation
    assert t["quantized_decomposed.quantize_per_tensor.default"] == 2, gm.code
    assert t["quantized_decomposed.dequantize_per_tensor.default"] == 0, gm.code
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-2:]), atol=1e-5, rtol=1e-5)


def test_int8_propagation_cat_of_three_then_view():
    from qdq_models import Int8Ops
    model = Int8Ops(form=2).eval()
    gm, flat, stats = rewrite(model, model.example_inputs())
    assert stats["fused"].get("int8.cat") == 1 and stats["fused"].get("int8.view") == 1, stats
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-2:]), atol=1e-5, rtol=1e-5)


def test_lookalike_post_op_is_not_folded():
    from variants import conv
    model = QDQLayer(conv("qconv2d.not_hardswish", post="not_hardswish")).eval()
    gm, flat, stats = rewrite(model, model.example_inputs())
    assert set(stats["fused"]) == {"qconv.prepack"} and stats["unfused"] == [], stats
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-1:]), atol=2e-3, rtol=1e-3)


def test_unfused_layers_are_reported_with_reason():
    from variants import conv
    model = QDQLayer(conv("qconv2d.dynamic", dynamic=True)).eval()
    gm, flat, stats = rewrite(model, model.example_inputs())
    assert [(u.op, u.code) for u in stats["unfused"]] == [("conv", "dynamic_conv")], stats
    assert stats["unfused"][0].reason.endswith("dynamic (tensor-qparam) activation: fused for linear only"), stats
    # refused for another reason than saturation: the weight dequantize stays as it is
    assert targets(gm)["quantized_decomposed.dequantize_per_channel.default"] == 1, gm.code


def test_layer_refused_for_saturation_gets_a_foldable_fp32_weight(monkeypatch):
    """As on a CPU without VNNI with an 8-bit model: the layer stays fp32, reported, and its weight
    dequantize becomes plain arithmetic that freezing folds into an fp32 constant (no per-call
    dequantize), computing exactly what the Q/DQ model computes."""
    from inductor_quant.kernels import cpu
    from variants import BY_ID
    monkeypatch.setattr(cpu, "fuses_exactly", lambda *args: False)
    for vid in ("qconv2d.relu.q", "qlinear.2d", "qlinear.wpt"):
        model = QDQLayer(BY_ID[vid]).eval()
        gm, flat, stats = rewrite(model, model.example_inputs())
        assert stats["fused"] == {} and [u.code for u in stats["unfused"]] == ["saturation"], stats
        t = targets(gm)
        assert t["quantized_decomposed.dequantize_per_channel.default"] == 0, gm.code
        assert t["quantized_decomposed.dequantize_per_tensor.default"] == 1 + BY_ID[vid].out_q, gm.code  # activations only
        with torch.no_grad():
            torch.testing.assert_close(gm(*flat), model(*flat[-1:]), atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(gm(*flat), model(*flat[-1:]))


class AvgPool(torch.nn.Module):
    def forward(self, x):
        return q_dq(torch.nn.functional.avg_pool2d(q_dq(x, X_SCALE, X_ZP), 2), X_SCALE, X_ZP)


def test_pools_left_in_fp32_are_reported():
    gm, flat, stats = rewrite(AvgPool(), (torch.randn(1, 4, 6, 6),))
    assert [(u.op, u.code) for u in stats["unfused"]] == [("pool", "avg_pool")], stats


def test_every_fusion_id_fired():
    """Layer d: every registered id fires on some variant (re-runs the cheap rewrites if the
    parametrized tests above were deselected)."""
    if set(iq_passes.fusion_ids()) - set(FIRED):
        for bf16 in (False, True):
            for v in VARIANTS:
                model = QDQLayer(v).eval()
                rewrite(model, model.example_inputs(bf16), bf16)
        rewrite(TwoBranch().eval(), (torch.randn(2, 8, 7, 7),))
        test_int8_activation_conv_is_shifted_to_uint8()
        test_int8_propagation()
        test_int8_propagation_cat_of_three_then_view()
        rewrite(HandSiblings().eval(), (torch.randn(8, 64), torch.randn(8, 64)))
        rewrite(CatDim0(), tuple(torch.randn(2, 4) for _ in range(3)))
    # without VNNI an int8 activation (8 bits once shifted) never fuses: its shift cannot fire
    needs_vnni = set() if cpu_info().vnni else {"qconv.s8_to_u8"}
    missing = set(iq_passes.fusion_ids()) - set(FIRED) - needs_vnni
    assert not missing, f"registered but never fired in the unit layer: {sorted(missing)}"


def test_saturation_warning_once_per_process_until_reset(monkeypatch):
    """The pass (as Inductor calls it) warns once per process when layers stay fp32 for saturation."""
    import importlib
    import warnings
    from inductor_quant.kernels import cpu
    from variants import BY_ID
    install = importlib.import_module("inductor_quant.passes.install")
    monkeypatch.setattr(cpu, "fuses_exactly", lambda *args: False)
    model = QDQLayer(BY_ID["qlinear.2d"]).eval()

    def warned():
        gm, _ = stage_graph(model, model.example_inputs())
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), \
                torch._inductor.config.patch(freezing=True):
            warnings.simplefilter("always")
            install.INSTALLATION.pass_(gm.graph)
        return [w for w in caught if "would saturate" in str(w.message)]

    install.reset_warning()
    assert len(warned()) == 1 and warned() == []
    install.reset_warning()
    assert len(warned()) == 1