"""Layer b: our phases on small traced graphs, no torch.compile: fast, and they fail next to the rule.

Each variant is traced to the freezing-stage graph, rewritten by `registry.run`, then checked
for the fused ops and run eagerly (the prepack runs at call time here) against the Q/DQ model.
Layer d (coverage) is here too: across these graphs every registered fusion id fires.
"""

import collections

import pytest
import torch

from graph_utils import stage_graph, targets
from qdq_models import (CatDim0, dynamic_q_dq, HandSiblings, int8_weight, O_SCALE, QDQLayer, q_dq, W_DEFAULT, X_SCALE,
                        X_ZP)
from variants import VARIANTS, left_fp32_for_saturation

import inductor_quant.passes as iq_passes
from inductor_quant.kernels import native, probe
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.passes import own_calls, registry
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


class ConvFlattened(torch.nn.Module):
    """A fused conv's output flattened: its channels-last output cannot be viewed as traced."""

    def __init__(self):
        super().__init__()
        from variants import conv
        self.a = QDQLayer(conv("a"))

    def forward(self, x):
        return self.a.tail(q_dq(x, X_SCALE, X_ZP)).flatten(1)


def test_a_view_after_a_fused_conv_reads_as_reshape():
    model = ConvFlattened().eval()
    gm, flat, stats = rewrite(model, (torch.randn(2, 8, 7, 7),))
    t = targets(gm)
    assert stats["fused"]["layout.view_as_reshape"] == 1 and t["aten.reshape.default"] == 1, gm.code
    assert not t["aten.view.default"] and t["onednn.qconv_pointwise.default"] == 1, gm.code
    with torch.no_grad():
        out = gm(*flat)
        assert out.is_contiguous()  # a copy of the channels-last conv output, in the traced layout
        torch.testing.assert_close(out, model(*flat[-1:]), atol=2e-3, rtol=1e-3)


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


# a 4-D int8 activation laid out so that a linear on it traces as bmm: (quantized shape, the
# permute between quantize and dequantize); bmm_nd: its leading dims still merge into one batch
# dim (a view), bmm_nd_copy: they do not (a contiguous copy first)
LAYOUTS_4D = {"bmm_nd": ((2, 3, 16, 5), (0, 1, 3, 2)), "bmm_nd_copy": ((2, 16, 3, 5), (0, 2, 3, 1))}


class Int8LinearOn4D(torch.nn.Module):
    """linear(dq(permuted int8 x), dq(w)) [+ b] on a 4-D input: static (per-channel or
    per-tensor weights) or dynamic activation quantization."""

    def __init__(self, form: str, weight: str, bias: bool):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dims, self.weight_kind = LAYOUTS_4D[form][1], weight
        self.register_buffer("w", int8_weight((8, 16), g))
        self.register_buffer("w_scale", torch.rand(8, generator=g) / 64 + 1e-3)
        self.register_buffer("w_zp", torch.zeros(8, dtype=torch.int64))
        self.register_buffer("b", torch.randn(8, generator=g) if bias else None)

    def forward(self, x):
        qd = torch.ops.quantized_decomposed
        if self.weight_kind == "dynamic":
            scale, zp = qd.choose_qparams.tensor(x, 0, 255, torch.finfo(torch.float32).eps, torch.uint8)
            q = qd.quantize_per_tensor.tensor(x, scale, zp, 0, 255, torch.uint8)
            xd = qd.dequantize_per_tensor.tensor(q.permute(self.dims), scale, zp, 0, 255, torch.uint8)
        else:
            q = qd.quantize_per_tensor.default(x, X_SCALE, X_ZP, 0, 255, torch.uint8)
            xd = qd.dequantize_per_tensor.default(q.permute(self.dims), X_SCALE, X_ZP, 0, 255, torch.uint8)
        lo, hi = W_DEFAULT
        if self.weight_kind == "per_tensor":
            w = qd.dequantize_per_tensor.default(self.w, 0.01, 0, lo, hi, torch.int8)
        else:
            w = qd.dequantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, lo, hi, torch.int8)
        return torch.nn.functional.linear(xd, w, self.b)


ND_CASES = [(form, weight, bias, bf16) for form in LAYOUTS_4D for weight in ("per_channel", "per_tensor", "dynamic")
            for bias in (True, False) for bf16 in (False, True)]


def nd_fusion_id(form, weight, bias, bf16):
    kind = "dynamic" if weight == "dynamic" else "prepack"
    return (f"qlinear.{kind}.{form}{'.wpt' if weight == 'per_tensor' else ''}{'.bf16' if bf16 else ''}"
            f"{'' if bias else '.nobias'}")


@pytest.mark.parametrize("form,weight,bias,bf16", ND_CASES, ids=[nd_fusion_id(*c) for c in ND_CASES])
def test_linear_on_a_permuted_4d_input_fuses(form, weight, bias, bf16):
    model = Int8LinearOn4D(form, weight, bias).eval()
    x = torch.randn(LAYOUTS_4D[form][0])
    gm, flat, stats = rewrite(model, (x,), bf16)
    assert stats == {"fused": {nd_fusion_id(form, weight, bias, bf16): 1}, "unfused": [], "kernels": {}}, stats
    t = targets(gm)
    assert t["onednn.qlinear_pointwise.default"] + t["onednn.qlinear_pointwise.tensor"] == 1, gm.code
    assert not any(t[op] for op in FP32_OPS + ("aten.bmm.default",)), gm.code
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref, out = model(x), gm(*flat)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2 if bf16 else 2e-3, rtol=2e-2 if bf16 else 1e-3)


class AddCastBackUnderAutocast(torch.nn.Module):
    """relu(a.add_(b)) under bf16 autocast as functionalization leaves it: a (a bf16 linear
    output) + b (an fp32 dequantized one) adds in fp32, then the result is cast back to bf16."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name in ("wa", "wb"):
            self.register_buffer(name, int8_weight((16, 16), g))
        self.register_buffer("w_scale", torch.rand(16, generator=g) / 64 + 1e-3)
        self.register_buffer("w_zp", torch.zeros(16, dtype=torch.int64))

    def forward(self, x):
        x = q_dq(x, X_SCALE, X_ZP)
        lo, hi = W_DEFAULT

        def linear(w):
            dq_w = torch.ops.quantized_decomposed.dequantize_per_channel.default(w, self.w_scale, self.w_zp, 0, lo, hi,
                                                                                   torch.int8)
            return torch.nn.functional.linear(x, dq_w)

        a, b = linear(self.wa), q_dq(linear(self.wb), O_SCALE, 128)
        return q_dq(torch.relu((a + b).to(a.dtype)), O_SCALE, 0)


def test_cast_back_to_bf16_after_an_add_folds_and_so_do_relu_and_quantize():
    gm, flat, stats = rewrite(AddCastBackUnderAutocast().eval(), (torch.randn(4, 16),), bf16=True)
    assert stats["unfused"] == [] and stats["fused"]["post.cast.bf16"] == 1, stats
    assert stats["fused"].get("post.binary.relu.bf16") == 1 and stats["fused"].get("post.output.quant.bf16") == 2, stats
    t = targets(gm)
    assert not t["prims.convert_element_type.default"] or all(
        n.args[0].op == "placeholder" for n in gm.graph.nodes if n.target is torch.ops.prims.convert_element_type.default)
    assert not t["aten.relu.default"] and t["onednn.qlinear_pointwise.binary"] == 1, gm.code


class Fp16WeightLinear(torch.nn.Module):
    """[relu](linear(x, fp32(fp16(w)), b)): convert_pt2e's form of the fp16-weight config."""

    def __init__(self, bias: bool, relu: bool, dims):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.relu, self.dims = relu, dims  # dims: a permute of the input first (None: none)
        self.register_buffer("w", torch.randn(8, 16, generator=g) / 4)
        self.register_buffer("b", torch.randn(8, generator=g) if bias else None)

    def forward(self, x):
        if self.dims:  # an input that cannot be viewed as 2-D: traced as expand + bmm
            x = x.permute(self.dims)
        no_fuse = torch.ops.quantized_decomposed.convert_element_type.no_fuse
        y = torch.nn.functional.linear(x, no_fuse(no_fuse(self.w, torch.float16), torch.float32), self.b)
        return torch.relu(y) if self.relu else y


# (x shape, permute before the linear, the id's form part): the ways a linear traces
# (registry.LINEAR_FORMS)
FP16_FORMS = [((2, 3, 16), None, "nd"), ((2, 16, 3), (0, 2, 1), "bmm"), ((4, 16), None, "2d"), ((1, 16), None, "m1"),
              *[(shape, dims, form) for form, (shape, dims) in LAYOUTS_4D.items()]]
FP16_CASES = [(shape, dims, form, bias, relu) for shape, dims, form in FP16_FORMS for bias in (True, False)
              for relu in (False, True) if bias or form != "m1"]


@pytest.mark.parametrize("shape,dims,form,bias,relu", FP16_CASES,
                         ids=[f"{f}{'' if b else '.nobias'}{'.relu' if r else ''}" for _, _, f, b, r in FP16_CASES])
def test_fp16_weight_linear_becomes_onednn_fp16_op(shape, dims, form, bias, relu):
    model = Fp16WeightLinear(bias, relu, dims).eval()
    x = torch.randn(shape)
    gm, flat, stats = rewrite(model, (x,))
    fusion_id = f"linear.fp16_weight{'.relu' if relu else ''}.{form}{'' if bias else '.nobias'}"
    assert stats == {"fused": {fusion_id: 1}, "unfused": [], "kernels": {}}, stats
    t = targets(gm)
    op = "onednn.linear_relu_dynamic_fp16.default" if relu else "onednn.linear_dynamic_fp16.default"
    assert t[op] == 1 and t["onednn.linear_prepack_fp16.default"] == 1, gm.code
    assert not any(t[op] for op in FP32_OPS + ("aten.bmm.default", "aten.relu.default")), gm.code
    with torch.no_grad():  # fp32 math on the same fp16 weights: equal up to summation order
        torch.testing.assert_close(gm(*flat), model(x), atol=1e-5, rtol=1e-5)


def test_fp16_weight_under_bf16_autocast_is_left_to_autocast_by_design():
    gm, flat, stats = rewrite(Fp16WeightLinear(True, False, None).eval(), (torch.randn(4, 16),), bf16=True)
    assert stats["fused"] == {} and [(u.op, u.code) for u in stats["unfused"]] == [("linear", "fp16_weight_autocast")]


class WeightOnlyLinear(torch.nn.Module):
    """convert_pt2e's forms of the weight-only configs: int8, linear(x, dq_per_channel(w [8, 16] in
    [-127, 127]), b); int4 (`bits=4`), linear(x, reshape(dq_per_channel(w [16 * 32 / 32, 32] in
    [-8, 7])), [16, 32]), b), group 32 and 16 outputs, which torch's int4 GEMM takes; group-wise
    int8 (`bits="8g"`), the int4 form with values in [-127, 127]."""

    def __init__(self, bias: bool, dims, bits=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dims, self.bits = dims, bits
        out, qmax = (8, 127) if bits == 8 else (16, 7) if bits == 4 else (16, 127)
        self.shape = (out, 16 if bits == 8 else 32)
        self.register_buffer("w", torch.randint(-qmax, qmax + 1, self.shape, dtype=torch.int8, generator=g))
        self.register_buffer("scale", torch.rand(out, generator=g) * 0.02 + 0.001)
        self.register_buffer("zp", torch.zeros(out, dtype=torch.int64))
        self.register_buffer("b", torch.randn(out, generator=g) if bias else None)

    def forward(self, x):
        if self.dims:
            x = x.permute(self.dims)
        qmin, qmax = (-8, 7) if self.bits == 4 else (-127, 127)
        dq = torch.ops.quantized_decomposed.dequantize_per_channel(self.w, self.scale, self.zp, 0, qmin, qmax, torch.int8)
        return torch.nn.functional.linear(x, dq if self.bits == 8 else dq.reshape(self.shape), self.b)


WOQ_CASES = [(shape, dims, form, bias, bf16) for shape, dims, form in FP16_FORMS for bias in (True, False)
             for bf16 in (False, True) if bias or form != "m1"]


def rewrite_with_constants(model, inputs, bf16=False):
    """As in a freezing compile: the rule reads the zero points as the compile's constants (the
    buffers, first among the graph's inputs)."""
    context = torch._guards.TracingContext(None)
    context.params_flat = [b for _, b in model.named_buffers()]
    with torch._guards.tracing(context):
        return rewrite(model, inputs, bf16)


def rewrite_with_our_kernels(model, inputs, bf16=False):
    """rewrite_with_constants with our kernel layer in the compile."""
    assert native.available()
    with own_calls.in_this_compile(True):
        return rewrite_with_constants(model, inputs, bf16)


# the int4 forms have 32 input features (one group) and no one-row form (passes/registry.py)
INT4_CASES = [(tuple(32 if d == 16 else d for d in shape), dims, form, bias, bf16)
              for shape, dims, form, bias, bf16 in WOQ_CASES if form != "m1"]
# bits -> [(our kernel count key or None, op the rewritten graph calls, how the rule sees the compile)]:
# int4 runs our kernel where our layer is in the compile, torch's int4 GEMM (an ATen op) without it
WEIGHT_ONLY_KERNELS = {8: [("woq_linear", "iq_onednn.woq_linear.default", rewrite_with_our_kernels)],
                       4: [("woq_int4_linear", "iq_onednn.woq_int4_linear.default", rewrite_with_our_kernels),
                           (None, "aten._weight_int4pack_mm_for_cpu.default", rewrite_with_constants)],
                       "8g": [("woq_linear", "iq_onednn.woq_linear.default", rewrite_with_our_kernels)]}
WEIGHT_ONLY_IDS = {8: "linear.woq_int8", 4: "linear.woq_int4", "8g": "linear.woq_grouped_int8"}
WEIGHT_ONLY_CASES = ((8, WOQ_CASES), (4, INT4_CASES), ("8g", INT4_CASES))


@pytest.mark.parametrize("bits,shape,dims,form,bias,bf16", [(n, *c) for n, cases in WEIGHT_ONLY_CASES for c in cases],
                         ids=[f"int{n}.{f}{'.bf16' if h else ''}{'' if b else '.nobias'}"
                              for n, cases in WEIGHT_ONLY_CASES for _, _, f, b, h in cases])
def test_weight_only_linear_becomes_its_kernel(bits, shape, dims, form, bias, bf16):
    """int8: our kernel layer's woq_linear; int4: our woq_int4_linear, or torch's int4 GEMM (an
    ATen op) in a compile without our kernel layer; group-wise int8: our woq_linear with group
    scales (the int4 rule's pattern: the int4 rule leaves it to this one)."""
    for kernel, op, rewrite_as_compiled in WEIGHT_ONLY_KERNELS[bits]:
        model = WeightOnlyLinear(bias, dims, bits).eval()
        x = torch.randn(shape)
        gm, flat, stats = rewrite_as_compiled(model, (x,), bf16)
        if bits == 8 and not probe.weight_only_linear_builds(torch.bfloat16 if bf16 else torch.float32):
            assert [u.code for u in stats["unfused"]] == ["woq_unbuildable"], stats  # bf16 without AVX-512
            return
        fusion_id = f"{WEIGHT_ONLY_IDS[bits]}.{form}{'.bf16' if bf16 else ''}{'' if bias else '.nobias'}"
        assert stats == {"fused": {fusion_id: 1}, "unfused": [], "kernels": {kernel: 1} if kernel else {}}, stats
        t = targets(gm)
        assert t[op] == 1, gm.code
        assert not any(t[o] for o in FP32_OPS + ("aten.bmm.default",)), gm.code
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ref, out = model(x), gm(*flat)
        tol = 2e-2 if bf16 else 1e-5
        if bf16 and not torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol):
            # up to 16 rows with group scales run our GEMV, which multiplies the dequantized weight
            # exactly (fp32) where eager autocast rounds it to bf16 first: then the witness is the
            # fp32 linear of the bf16 input, within the output's bf16 rounding
            with torch.no_grad():
                ref = model(x.bfloat16().float())
            tol = 1e-2
        torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


class WeightOnlySiblings(torch.nn.Module):
    """Two weight-only int8 linears on one input (under autocast each casts it on its own)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = WeightOnlyLinear(True, None), WeightOnlyLinear(True, None)
        self.b.w.neg_()

    def forward(self, x):
        return self.a(x) * self.b(x)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_weight_only_siblings_become_one_call(bf16):
    if not probe.weight_only_linear_builds(torch.bfloat16 if bf16 else torch.float32):
        pytest.skip("our weight-only kernel does not build for this dtype on this CPU")
    model, x = WeightOnlySiblings().eval(), torch.randn(4, 16)
    gm, flat, stats = rewrite_with_our_kernels(model, (x,), bf16)
    merged = {k: v for k, v in stats["fused"].items() if k.startswith("merge.")}
    assert merged == {"merge.sibling_woq_linears": 1, "merge.sibling_woq_linears.absorbed": 1}, stats
    assert targets(gm)["iq_onednn.woq_linear.default"] == 1, gm.code
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref, out = model(x), gm(*flat)
    tol = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * ref.abs().max().item(), rtol=tol)


def test_weight_only_int8_linear_outside_our_kernel_layer_is_reported():
    model = WeightOnlyLinear(True, None).eval()
    gm, flat, stats = rewrite(model, (torch.randn(4, 16),))  # no own_calls.in_this_compile: as AOTInductor
    assert stats["fused"] == {} and [u.code for u in stats["unfused"]] == ["act_not_dequantized"], stats


class PerTokenLinear(torch.nn.Module):
    """linear(dq_per_token(q_per_token(x)), dq_per_channel(w 7-bit: exact on every CPU), b):
    convert_pt2e's form of the per-token dynamic config."""

    def __init__(self, bias: bool, dims):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dims = dims
        self.register_buffer("w", torch.randint(-64, 64, (8, 16), dtype=torch.int8, generator=g))
        self.register_buffer("scale", torch.rand(8, generator=g) * 0.02 + 0.001)
        self.register_buffer("zp", torch.zeros(8, dtype=torch.int64))
        self.register_buffer("b", torch.randn(8, generator=g) if bias else None)

    def forward(self, x):
        if self.dims:
            x = x.permute(self.dims)
        qd = torch.ops.quantized_decomposed
        s, zp = qd.choose_qparams_per_token(x, torch.int8)
        q = qd.quantize_per_token(x, s, zp, -127, 127, torch.int8)
        dq_x = qd.dequantize_per_token(q, s, zp, -127, 127, torch.int8, torch.float32)
        dq_w = qd.dequantize_per_channel(self.w, self.scale, self.zp, 0, -64, 63, torch.int8)
        return torch.nn.functional.linear(dq_x, dq_w, self.b)


@pytest.mark.parametrize("shape,dims,form,bias,bf16", WOQ_CASES,
                         ids=[f"{f}{'.bf16' if h else ''}{'' if b else '.nobias'}" for _, _, f, b, h in WOQ_CASES])
def test_per_token_linear_becomes_an_int8_linear_times_row_scales(shape, dims, form, bias, bf16):
    model = PerTokenLinear(bias, dims).eval()
    x = torch.randn(shape) * 3
    gm, flat, stats = rewrite_with_constants(model, (x,), bf16)
    fusion_id = f"qlinear.per_token.{form}{'.bf16' if bf16 else ''}{'' if bias else '.nobias'}"
    assert stats["fused"] == {fusion_id: 1} and stats["unfused"] == [], stats
    t = targets(gm)
    assert t["onednn.qlinear_pointwise.default"] == 1, gm.code
    assert not any(t[op] for op in FP32_OPS + ("aten.bmm.default",)) and "per_token" not in gm.code, gm.code
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref, out = model(x), gm(*flat)
    tol = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * ref.abs().max().item(), rtol=tol)


def test_every_fusion_id_fired():
    """Layer d: every registered id fires on some variant (re-runs the cheap rewrites if the
    parametrized tests above were deselected)."""
    if set(iq_passes.fusion_ids()) - set(FIRED):
        for bf16 in (False, True):
            for v in VARIANTS:
                model = QDQLayer(v).eval()
                rewrite(model, model.example_inputs(bf16), bf16)
        rewrite(TwoBranch().eval(), (torch.randn(2, 8, 7, 7),))
        test_a_view_after_a_fused_conv_reads_as_reshape()
        test_int8_activation_conv_is_shifted_to_uint8()
        test_int8_propagation()
        test_int8_propagation_cat_of_three_then_view()
        rewrite(HandSiblings().eval(), (torch.randn(8, 64), torch.randn(8, 64)))
        rewrite(CatDim0(), tuple(torch.randn(2, 4) for _ in range(3)))
        for shape, dims, _, bias, relu in FP16_CASES:
            rewrite(Fp16WeightLinear(bias, relu, dims).eval(), (torch.randn(shape),))
        rewrite(AddCastBackUnderAutocast().eval(), (torch.randn(4, 16),), bf16=True)
        for form, weight, bias, bf16 in ND_CASES:
            rewrite(Int8LinearOn4D(form, weight, bias).eval(), (torch.randn(LAYOUTS_4D[form][0]),), bf16)
        for shape, dims, _, bias, bf16 in WOQ_CASES:
            rewrite_with_our_kernels(WeightOnlyLinear(bias, dims).eval(), (torch.randn(shape),), bf16)
        rewrite_with_our_kernels(WeightOnlySiblings().eval(), (torch.randn(4, 16),))
        for shape, dims, _, bias, bf16 in WOQ_CASES:
            rewrite_with_constants(PerTokenLinear(bias, dims).eval(), (torch.randn(shape),), bf16)
        for shape, dims, _, bias, bf16 in INT4_CASES:
            rewrite_with_constants(WeightOnlyLinear(bias, dims, bits=4).eval(), (torch.randn(shape),), bf16)
            rewrite_with_our_kernels(WeightOnlyLinear(bias, dims, bits="8g").eval(), (torch.randn(shape),), bf16)
    # without VNNI an int8 activation (8 bits once shifted) never fuses: its shift cannot fire
    needs_vnni = set() if cpu_info().vnni else {"qconv.s8_to_u8"}
    # bf16 weight-only linears need AVX-512 (kernels/probe.py)
    needs_avx512 = set() if probe.weight_only_linear_builds(torch.bfloat16) else {
        f for f in iq_passes.fusion_ids() if f.startswith("linear.woq_int8") and ".bf16" in f}
    missing = set(iq_passes.fusion_ids()) - set(FIRED) - needs_vnni - needs_avx512
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