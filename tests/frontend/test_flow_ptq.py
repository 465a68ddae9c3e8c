"""PTQ flow with the tutorial's BackendQuantizer: every spec kind, numerics, representation."""

import copy

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.quantizer import QuantizationAnnotation
from flow_helpers import (
    ANN,
    BackendQuantizer,
    ConvModel,
    LinearModel,
    attr,
    calibrate,
    call_targets,
    export,
    observers,
    sqnr,
)

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


def _ptq(model, x, quantizer, batches=4, **convert_kwargs):
    torch.manual_seed(0)
    prepared = prepare_pt2e(export(model.eval(), x), quantizer)
    calibrate(prepared, [x] + [torch.randn_like(x) for _ in range(batches - 1)])
    return prepared, convert_pt2e(prepared, **convert_kwargs)


def _dq_inputs(gm, op):
    """For each `op` node, the dequantize nodes feeding it (by arg position)."""
    return [[a for a in n.args if isinstance(a, torch.fx.Node) and "dequantize" in str(a.target)]
            for n in gm.graph.nodes if n.target == op]


@pytest.mark.parametrize("act_dtype", [torch.int8, torch.uint8])
def test_conv_model_sqnr_and_representation(act_dtype):
    torch.manual_seed(0)
    model, x = ConvModel(), torch.randn(2, 3, 8, 8)
    _, q = _ptq(model, x, BackendQuantizer(act_dtype=act_dtype))
    assert sqnr(model(x), q(x)) >= 20
    targets = call_targets(q)
    assert qd.quantize_per_tensor.default in targets
    # weights are int8 constants (get_attr) read by a dequantize; no fp32 weight quantize at runtime
    for n in q.graph.nodes:
        if n.target in (aten.conv2d.default,):
            w = n.args[1]
            assert w.target == qd.dequantize_per_tensor.default and w.args[0].op == "get_attr"
            assert attr(q, w.args[0].target).dtype == torch.int8
            b = n.args[2]  # derived bias: int32 constant + dequantize
            assert b.target == qd.dequantize_per_tensor.default and attr(q, b.args[0].target).dtype == torch.int32


def test_linear_model_sqnr_per_channel():
    torch.manual_seed(0)
    model, x = LinearModel(), torch.randn(8, 16)
    _, q = _ptq(model, x, BackendQuantizer(per_channel=True, derived_bias=False))
    assert sqnr(model(x), q(x)) >= 20
    lin = [n for n in q.graph.nodes if n.target == aten.linear.default]
    for n in lin:
        assert n.args[1].target == qd.dequantize_per_channel.default
        assert n.args[1].args[3] == 0  # axis 0
        assert n.args[2].op == "get_attr" and attr(q, n.args[2].target).dtype == torch.float32  # fp32 bias


def test_shared_spec_gives_add_inputs_one_scale():
    torch.manual_seed(0)
    model, x = ConvModel(), torch.randn(2, 3, 8, 8)
    prepared = prepare_pt2e(export(model.eval(), x), BackendQuantizer())
    add = next(n for n in prepared.graph.nodes if n.target == aten.add.Tensor)
    # both add inputs read the same observer instance (transitive: relu output -> conv2 input too)
    mods = {id(prepared.get_submodule(a.target)) for a in add.args[:2] if a.op == "call_module"}
    assert len(mods) == 1
    calibrate(prepared, [x])
    q = convert_pt2e(prepared)
    add = next(n for n in q.graph.nodes if n.target == aten.add.Tensor)
    scales = {a.args[1] for a in add.args[:2]}
    assert len(scales) == 1


def test_fixed_qparams_sigmoid():
    torch.manual_seed(0)
    _, q = _ptq(ConvModel(), torch.randn(2, 3, 8, 8), BackendQuantizer())
    sig = next(n for n in q.graph.nodes if n.target == aten.sigmoid.default)
    (out_q,) = sig.users
    assert out_q.target == qd.quantize_per_tensor.default
    assert out_q.args[1:] == (1.0 / 256.0, 0, 0, 255, torch.uint8)
    assert sig.args[0].args[1:] == (1.0 / 256.0, 0, 0, 255, torch.uint8)


def test_derived_bias_scale_is_act_times_weight_scale():
    torch.manual_seed(0)
    _, q = _ptq(ConvModel(), torch.randn(2, 3, 8, 8), BackendQuantizer())
    conv = next(n for n in q.graph.nodes if n.target == aten.conv2d.default)
    x_scale, w_scale, b_scale = conv.args[0].args[1], conv.args[1].args[1], conv.args[2].args[1]
    assert b_scale == pytest.approx(x_scale * w_scale, rel=1e-5)
    assert conv.args[2].args[-1] == torch.int32


def test_implicit_sharing_observes_once():
    """linear output spec == next linear's input spec: one observer, no observer-after-observer."""
    two_linears = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)).eval()
    prepared = prepare_pt2e(export(two_linears, torch.randn(2, 16)), BackendQuantizer(derived_bias=False))
    for n in prepared.graph.nodes:
        if n.op == "call_module" and n.target.startswith("activation_post_process"):
            assert not (n.args[0].op == "call_module" and n.args[0].target.startswith("activation_post_process"))


def test_no_implicit_sharing_when_disallowed():
    class NoShare(BackendQuantizer):
        def annotate(self, gm):
            super().annotate(gm)
            for n in gm.graph.nodes:
                if ANN in n.meta:
                    n.meta[ANN].allow_implicit_sharing = False
            return gm

    two_linears = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)).eval()
    prepared = prepare_pt2e(export(two_linears, torch.randn(2, 16)), NoShare(derived_bias=False))
    chained = [n for n in prepared.graph.nodes if n.op == "call_module" and n.args[0].op == "call_module"
               and n.args[0].target.startswith("activation_post_process")]
    assert chained  # fc1 output observer -> fc2 input observer


def test_fold_quantize_false_keeps_fp32_weight():
    torch.manual_seed(0)
    model, x = LinearModel(), torch.randn(8, 16)
    _, q = _ptq(model, x, BackendQuantizer(per_channel=True, derived_bias=False), fold_quantize=False)
    lin = next(n for n in q.graph.nodes if n.target == aten.linear.default)
    qw = lin.args[1].args[0]
    assert qw.target == qd.quantize_per_channel.default
    assert attr(q, qw.args[0].target).dtype == torch.float32
    assert sqnr(model(x), q(x)) >= 20


def test_dynamic_quantization():
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    model, x = LinearModel().eval(), torch.randn(8, 16)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=True))
    prepared = prepare_pt2e(export(model, x), quantizer)
    q = convert_pt2e(prepared)  # no calibration needed: weights are observed from their constants
    targets = call_targets(q)
    assert qd.choose_qparams.tensor in targets
    assert qd.quantize_per_tensor.tensor in targets and qd.dequantize_per_tensor.tensor in targets
    assert qd.dequantize_per_channel.default in targets
    assert sqnr(model(x), q(x)) >= 20


def test_exported_program_accepted_and_observers_are_submodules():
    torch.manual_seed(0)
    x = torch.randn(2, 16)
    ep = torch.export.export(LinearModel().eval(), (x,))
    prepared = prepare_pt2e(ep, BackendQuantizer())
    obs = observers(prepared)
    assert obs and all(name.startswith("activation_post_process_") for name in obs)
    assert any(k.startswith("activation_post_process_") for k in prepared.state_dict())
    prepared.apply(torch.ao.quantization.disable_observer)  # works on observers and fake-quant
    calibrate(prepared, [x])
    convert_pt2e(prepared)


def test_user_observer_ctor_with_args():
    torch.manual_seed(0)
    model, x = LinearModel(), torch.randn(8, 16)
    ctr = MinMaxObserver.with_args(quant_min=0, quant_max=127, eps=2 - 12)
    _, q = _ptq(model, x, BackendQuantizer(act_dtype=torch.uint8, act_ctr=ctr, derived_bias=False))
    assert sqnr(model(x), q(x)) >= 20


def test_deepcopy_prepared_then_convert():
    torch.manual_seed(0)
    model, x = LinearModel(), torch.randn(8, 16)
    prepared, _ = _ptq(copy.deepcopy(model), x, BackendQuantizer())
    prepared2 = prepare_pt2e(export(model.eval(), x), BackendQuantizer())
    calibrate(prepared2, [x])
    q = convert_pt2e(copy.deepcopy(prepared2))  # derived bias still finds its (copied) sources
    assert sqnr(model(x), q(x)) >= 20


def test_node_meta_kept_on_new_nodes():
    torch.manual_seed(0)
    _, q = _ptq(LinearModel(), torch.randn(8, 16), BackendQuantizer())
    dq_w = [n for n in q.graph.nodes if n.target == aten.linear.default][0].args[1]
    assert "nn_module_stack" in dq_w.meta


def test_sibling_edges_share_one_observer():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.a(x), self.b(x)

    x = torch.randn(2, 16)
    prepared = prepare_pt2e(export(TwoHeads().eval(), x), BackendQuantizer(derived_bias=False))
    x_obs = [n for n in prepared.graph.nodes if n.op == "call_module" and n.args[0].name == "x" and n.target != "_guards_fn"]
    assert len(x_obs) == 1 and len(x_obs[0].users) == 2
    calibrate(prepared, [x])
    q = convert_pt2e(prepared)
    assert sum(t == qd.quantize_per_tensor.default for t in call_targets(q)) == 1 + 2  # x once, two outputs


def test_shared_spec_is_transitive_tutorial_cat():
    """Tutorial: conv1_out, conv2_out, cat_input0 = qspec1; cat_input1 shares (conv1, cat)."""

    class Cat(BackendQuantizer):
        def annotate(self, gm):
            super().annotate(gm)
            for n in gm.graph.nodes:
                if n.target == aten.cat.default:
                    c1, c2 = n.args[0]
                    n.meta[ANN] = QuantizationAnnotation(
                        input_qspec_map={c1: self.act, c2: SharedQuantizationSpec((c1, n))}, _annotated=True)
            return gm

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.cat([self.conv1(x), self.conv2(x)], 1)

    from inductor_quant.quantizer import SharedQuantizationSpec

    x = torch.randn(1, 3, 4, 4)
    prepared = prepare_pt2e(export(M().eval(), x), Cat(derived_bias=False))
    cat = next(n for n in prepared.graph.nodes if n.target == aten.cat.default)
    conv_outs = [n for n in prepared.graph.nodes if n.op == "call_module" and n.args[0].target == aten.conv2d.default]
    mods = {id(prepared.get_submodule(n.target)) for n in conv_outs + [a for a in cat.args[0] if a.op == "call_module"]}
    assert len(conv_outs) == 2 and len(mods) == 1  # conv1 out, conv2 out and both cat inputs: ONE observer


class _NormThenLinear(torch.nn.Module):
    """`.float()` after a linear, as in an RMS norm: export records the dtype it saw."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 8)

    def forward(self, x):
        h = self.a(x).float()
        return self.b(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_converted_model_runs_under_bf16_autocast_despite_dtype_conversions():
    """int8-mixed-bf16 (autocast around the converted model): the linear's output is bf16 where
    export saw fp32, and export's dtype assertion before `.float()` must not refuse it."""
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    x = torch.randn(4, 16)
    prepared = prepare_pt2e(export(_NormThenLinear().eval(), x),
                            X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    assert aten._assert_tensor_metadata.default in call_targets(prepared)  # what export records
    prepared(x)
    converted = convert_pt2e(prepared)
    assert aten._assert_tensor_metadata.default not in call_targets(converted)
    with torch.no_grad():
        expected = converted(x)
        with torch.autocast("cpu", torch.bfloat16):
            mixed = converted(x)
    torch.testing.assert_close(mixed.float(), expected, rtol=0.05, atol=0.05)
