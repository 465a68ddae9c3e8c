"""QAT flow: fake-quant + simulated conv+bn fold train, convert folds for real, eval switches."""

import copy

import pytest
import torch
from torch import nn

from inductor_quant import (
    convert_pt2e,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    prepare_qat_pt2e,
)
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from flow_helpers import ConvBNModel, call_targets, export, randomize_bn, sqnr

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def _quantizer():
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))


def _data(dims=2, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, *([8] * dims), generator=g)
    return x, (x.mean(dim=tuple(range(1, x.dim()))) > 0).long() + 2 * (x[:, 0].flatten(1).mean(1) > 0).long()


def _train(model, x, y, steps=15, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dims", [1, 2])
def test_qat_trains_converts_and_matches_trained_model(dims):
    torch.manual_seed(0)
    x, y = _data(dims)
    prepared = prepare_qat_pt2e(export(randomize_bn(ConvBNModel(dims)).train(), x), _quantizer())
    assert any(isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in prepared.modules())
    bn_before = prepared.bn.running_mean.clone()
    losses = _train(prepared, x, y)
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(prepared.bn.running_mean, bn_before)  # BN stayed trainable, stats updated

    move_exported_model_to_eval(prepared)
    # Training-mode ranges (dropout, batch stats, moving averages) differ from eval ones;
    # re-estimate them once in eval mode, as one would with a real calibration set.
    for m in prepared.modules():
        if isinstance(m, torch.ao.quantization.FakeQuantize):
            m.activation_post_process.reset_min_max_vals()
    with torch.no_grad():
        prepared(x)
    float_equiv = copy.deepcopy(prepared)
    float_equiv.apply(torch.ao.quantization.disable_fake_quant)
    fq_out, float_out = prepared(x), float_equiv(x)
    converted = convert_pt2e(copy.deepcopy(prepared))
    targets = call_targets(converted)
    assert aten.batch_norm.default not in targets  # folded for real
    assert aten._native_batch_norm_legit.default not in targets
    assert qd.dequantize_per_channel.default in targets
    out = converted(x)
    torch.testing.assert_close(out, fq_out, atol=0.05, rtol=0.05)  # same math as the fake-quant model
    assert sqnr(float_out, out) >= 20


def test_tutorial_training_controls():
    """disable_observer via apply, freezing BN by editing the graph's training arg, checkpoints."""
    torch.manual_seed(0)
    x, y = _data()
    float_model = ConvBNModel()
    prepared = prepare_qat_pt2e(export(float_model.train(), x), _quantizer())
    _train(prepared, x, y, steps=3)
    prepared.apply(torch.ao.quantization.disable_observer)
    fq = next(m for m in prepared.modules() if isinstance(m, torch.ao.quantization.FakeQuantize))
    scale = fq.scale.clone()
    for n in prepared.graph.nodes:  # the tutorial's BN freeze, verbatim
        # Args: input, weight, bias, running_mean, running_var, training, momentum, eps
        # We set the `training` flag to False here to freeze BN stats
        if n.target in [
            torch.ops.aten._native_batch_norm_legit.default,
            torch.ops.aten.cudnn_batch_norm.default,
        ]:
            new_args = list(n.args)
            new_args[5] = False
            n.args = new_args
    prepared.recompile()
    stats = prepared.bn.running_var.clone()
    _train(prepared, x, y, steps=2)
    assert torch.equal(fq.scale, scale) and torch.equal(prepared.bn.running_var, stats)

    # checkpoint: export + prepare the same way, load the state dict, same outputs
    state = copy.deepcopy(prepared.state_dict())
    again = prepare_qat_pt2e(export(ConvBNModel().train(), x), _quantizer())
    again.load_state_dict(state)
    for m in (prepared, again):
        move_exported_model_to_eval(m)
    torch.testing.assert_close(again(x), prepared(x))


def test_move_exported_model_to_eval_and_train():
    torch.manual_seed(0)
    x, _ = _data()
    gm = export(ConvBNModel().train(), x)
    assert move_exported_model_to_eval(gm) is gm
    torch.testing.assert_close(gm(x), gm(x))  # dropout off, BN on running stats
    stats = gm.bn.running_mean.clone()
    gm(x)
    assert torch.equal(gm.bn.running_mean, stats)
    move_exported_model_to_train(gm)
    assert not torch.equal(gm(x), gm(x))  # dropout on
    assert not torch.equal(gm.bn.running_mean, stats)  # BN updates stats


def test_qat_linear_only_tutorial_model():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 10)

        def forward(self, x):
            return self.linear(x)

    example_inputs = (torch.randn(1, 5),)
    m = torch.export.export(M(), example_inputs).module()
    m = prepare_qat_pt2e(m, _quantizer())
    m(*example_inputs)
    m = convert_pt2e(m)
    move_exported_model_to_eval(m)
    assert torch.isfinite(m(*example_inputs)).all()


def test_dynamic_qat_with_fake_quantize():
    """Upstream's dynamic QAT activation: FakeQuantize over MovingAverageMinMax(averaging_constant=1)."""
    from torch.ao.quantization.fake_quantize import FakeQuantize
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver
    from inductor_quant.quantizer import QuantizationSpec
    from flow_helpers import BackendQuantizer, LinearModel

    quantizer = BackendQuantizer(derived_bias=False)
    quantizer.act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine, is_dynamic=True,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1)),
    )
    torch.manual_seed(0)
    x, model = torch.randn(4, 16), LinearModel()
    prepared = prepare_qat_pt2e(export(model, x), quantizer)
    prepared(x)
    q = convert_pt2e(prepared)
    assert qd.choose_qparams.tensor in call_targets(q)
    assert sqnr(model(x), q(x)) >= 20


def test_move_to_eval_handles_native_batch_norm_legit():
    g = torch.fx.Graph()
    x, w, b, m, v = (g.placeholder(n) for n in "xwbmv")
    bn = g.call_function(aten._native_batch_norm_legit.default, (x, w, b, m, v, True, 0.1, 1e-5))
    drop = g.call_function(aten.dropout.default, (g.call_function(__import__("operator").getitem, (bn, 0)), 0.5, True))
    g.output(drop)
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    move_exported_model_to_eval(gm)
    assert bn.args[5] is False and drop.args[2] is False
    move_exported_model_to_train(gm)
    assert bn.args[5] is True and drop.args[2] is True


def test_qat_every_spec_kind():
    """Shared/fixed/derived specs under QAT: FixedQParamsFakeQuantize for sigmoid, derived int32 bias."""
    from torch.ao.quantization.fake_quantize import FakeQuantize, FixedQParamsFakeQuantize
    from flow_helpers import BackendQuantizer, ConvModel

    torch.manual_seed(0)
    quantizer = BackendQuantizer(act_ctr=FakeQuantize.with_args(observer=torch.ao.quantization.MovingAverageMinMaxObserver))
    model, x = ConvModel(), torch.randn(4, 3, 8, 8)
    prepared = prepare_qat_pt2e(export(model, x), quantizer)
    assert any(isinstance(m, FixedQParamsFakeQuantize) for m in prepared.modules())
    prepared(x).sum().backward()
    q = convert_pt2e(prepared)
    sig = next(n for n in q.graph.nodes if n.target == aten.sigmoid.default)
    assert next(iter(sig.users)).args[1:3] == (1.0 / 256.0, 0)
    assert sqnr(model(x), q(x)) >= 20


def test_qat_resnet_style_reused_relu():
    from flow_helpers import TinyResNet

    torch.manual_seed(0)
    model, x = randomize_bn(TinyResNet()).train(), torch.randn(4, 3, 32, 32)
    prepared = prepare_qat_pt2e(export(model, x), _quantizer())
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(2):
        loss = prepared(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    prepared.eval()
    for m in prepared.modules():
        if isinstance(m, torch.ao.quantization.FakeQuantize):
            m.activation_post_process.reset_min_max_vals()
    with torch.no_grad():
        prepared(x)
    float_equiv = copy.deepcopy(prepared)
    float_equiv.apply(torch.ao.quantization.disable_fake_quant)
    q = convert_pt2e(copy.deepcopy(prepared))
    targets = call_targets(q)
    assert sum(t == qd.dequantize_per_channel.default for t in targets) == 6
    assert not any("batch_norm" in str(t) for t in targets)
    assert sqnr(float_equiv(x), q(x)) >= 20


def test_qat_conv_output_annotation_moves_past_bn():
    """A quantizer annotating conv's own output (bn after it) gets the output observed after bn."""
    from flow_helpers import BackendQuantizer

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model = randomize_bn(ConvBNModel()).train()
    prepared = prepare_qat_pt2e(export(model, x), BackendQuantizer(derived_bias=False))
    conv = next(n for n in prepared.graph.nodes if n.target == aten.conv2d.default)
    assert all(u.op != "call_module" for u in conv.users)  # no observer between conv and /s
    bn_out = next(n for n in prepared.graph.nodes if n.target == aten._native_batch_norm_legit.default)
    (getitem,) = bn_out.users
    assert any(u.op == "call_module" for u in getitem.users)
    prepared(x)
    move_exported_model_to_eval(prepared)
    q = convert_pt2e(copy.deepcopy(prepared))
    assert sqnr(prepared(x), q(x)) >= 20


def test_qat_annotations_naming_a_replaced_bn_are_rekeyed():
    """add(bn1(conv1(x)), bn2(conv2(x))) annotated with shared add inputs: the edges named the
    batch_norm nodes that QAT replaces; they must follow the replacement."""
    from flow_helpers import BackendQuantizer

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.b1(self.c1(x)) + self.b2(self.c2(x))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = randomize_bn(TwoBranches()).train()
    prepared = prepare_qat_pt2e(export(model, x), BackendQuantizer(derived_bias=False))
    add = next(n for n in prepared.graph.nodes if n.target == aten.add.Tensor and n.args[0].op == "call_module")
    assert len({prepared.get_submodule(a.target) for a in add.args[:2]}) == 1  # shared add inputs
    prepared(x).sum().backward()
    move_exported_model_to_eval(prepared)
    q = convert_pt2e(copy.deepcopy(prepared))
    assert sqnr(prepared(x), q(x)) >= 20
