"""Quantizers through prepare -> calibrate -> convert: graph shape and eager SQNR vs float."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inductor_quant import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from inductor_quant.quantizer import X86InductorQuantizer, XNNPACKQuantizer, get_symmetric_quantization_config
from quantizer_helpers import DYNAMIC, QAT, STATIC, Bottleneck, SameConv, export, nodes_of, sqnr

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.layer1 = Bottleneck(8, 8, 1)
        self.layer2 = Bottleneck(8, 16, 2)
        self.head = SameConv(16, 16, 3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        x = F.hardswish(self.head(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _calibrated(model, quantizer, data):
    prepared = prepare_pt2e(export(model, data[0]), quantizer)
    with torch.no_grad():
        for x in data:
            prepared(x)
    return convert_pt2e(prepared)


def test_resnet_style_ptq_all_layers_int8_and_sqnr():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    data = [torch.randn(2, 3, 16, 16) for _ in range(4)]
    q = X86InductorQuantizer().set_global(STATIC)
    converted = _calibrated(model, q, data)
    assert q.last_report.annotated == q.last_report.present == {"conv": 10, "linear": 1}

    layers = nodes_of(converted, *[aten.conv2d.default, aten.linear.default])
    assert len(layers) == 11
    for layer in layers:
        x, w = layer.args[0], layer.args[1]
        assert w.target == qd.dequantize_per_channel.default, f"{layer.name}: weight not dq_per_channel"
        assert w.args[0].op == "get_attr"
        assert getattr(converted, w.args[0].target).dtype == torch.int8
        assert x.target in (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor), layer.name
        assert x.args[-1] == torch.uint8
    for quant in nodes_of(converted, qd.quantize_per_tensor.default):
        assert quant.args[-1] == torch.uint8
    # int8 propagation: maxpool consumes a dq and its output is quantized with the same qparams
    (maxpool,) = nodes_of(converted, aten.max_pool2d.default)
    assert maxpool.args[0].target == qd.dequantize_per_tensor.default
    (q_after,) = [u for u in maxpool.users]
    assert q_after.target == qd.quantize_per_tensor.default and q_after.args[1:3] == maxpool.args[0].args[1:3]

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) >= 20


@pytest.mark.parametrize("post", [nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Tanh])
def test_linear_chain_sqnr(post):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), post(), nn.Linear(64, 16)).eval()
    data = [torch.randn(4, 7, 32) for _ in range(4)]
    converted = _calibrated(model, X86InductorQuantizer().set_global(STATIC), data)
    x = torch.randn(4, 7, 32)
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) >= 20
    # one q/dq pair between the two linears: q after the post-op, none between linear and post-op
    first = nodes_of(converted, aten.linear.default)[0]
    (act,) = first.users
    assert act.target not in (qd.quantize_per_tensor.default,)
    assert [u.target for u in act.users] == [qd.quantize_per_tensor.default]


def test_dynamic_linear_end_to_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(3, 16)
    converted = _calibrated(model, X86InductorQuantizer().set_global(DYNAMIC), [x])
    assert len(nodes_of(converted, qd.choose_qparams.tensor)) == 2
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) >= 20


def test_qat_conv_bn_relu_trains_and_converts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4))
    x, target = torch.randn(4, 3, 8, 8), torch.randn(4, 4, 8, 8)
    prepared = prepare_qat_pt2e(export(model.train(), x), X86InductorQuantizer().set_global(QAT))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.mse_loss(prepared(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    converted = convert_pt2e(prepared)
    convs = nodes_of(converted, aten.conv2d.default)
    assert len(convs) == 2 and all(c.args[1].target == qd.dequantize_per_channel.default for c in convs)
    assert not nodes_of(converted, aten.batch_norm.default)


def test_xnnpack_tutorial_flow_sqnr():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    data = [torch.randn(2, 3, 16, 16) for _ in range(4)]
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    converted = _calibrated(model, quantizer, data)
    for layer in nodes_of(converted, aten.conv2d.default, aten.linear.default):
        assert layer.args[0].target == qd.dequantize_per_tensor.default and layer.args[0].args[-1] == torch.int8
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert sqnr(model(x), converted(x)) >= 20


def test_degenerate_weights_and_constant_activations_stay_finite():
    """All-zero weight channels and a constant input: the configs' eps keeps scales finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(144, 3)).eval()
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = 0.0
        model[4].weight[0].zero_()
    x = torch.full((1, 3, 8, 8), 0.5)
    converted = _calibrated(model, X86InductorQuantizer().set_global(STATIC), [x, x])
    with torch.no_grad():
        out = converted(x)
    assert torch.isfinite(out).all()
    for node in converted.graph.nodes:
        if node.target in (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default):
            assert 0 < node.args[1] < float("inf"), node.name
        if node.target == qd.dequantize_per_channel.default:
            scales = getattr(converted, node.args[1].target)
            assert torch.isfinite(scales).all() and (scales > 0).all()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_xnnpack_tutorial_qat_flow(per_channel):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    x, target = torch.randn(4, 3, 6, 6), torch.randn(4, 4)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True))
    prepared = prepare_qat_pt2e(export(model.train(), x), quantizer)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.02)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.mse_loss(prepared(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    converted = convert_pt2e(prepared)
    with torch.no_grad():
        assert torch.isfinite(converted(x)).all()
    assert len(nodes_of(converted, aten.conv2d.default, aten.linear.default)) == 2


def test_qat_bottleneck_conv_bn_add_relu():
    torch.manual_seed(0)
    model = nn.Sequential(Bottleneck(4, 8, 2), nn.Flatten(), nn.Linear(8 * 16, 4))
    x, target = torch.randn(4, 4, 8, 8), torch.randn(4, 4)
    q = X86InductorQuantizer().set_global(QAT)
    prepared = prepare_qat_pt2e(export(model.train(), x), q)
    assert q.last_report.patterns["conv2d.bn.add.relu"] == 1
    opt = torch.optim.SGD(prepared.parameters(), lr=0.02)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.mse_loss(prepared(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    converted = convert_pt2e(prepared)
    layers = nodes_of(converted, aten.conv2d.default, aten.linear.default)
    assert len(layers) == 5 and all(n.args[1].target == qd.dequantize_per_channel.default for n in layers)
    with torch.no_grad():
        assert torch.isfinite(converted(x)).all()


def test_dynamic_qat_config_prepares_trains_and_converts():
    """QAT + dynamic: fake-quant per batch during training, choose_qparams after convert."""
    import torch

    from inductor_quant import convert_pt2e, prepare_qat_pt2e
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(4, 16)
    gm = torch.export.export(model, (x,)).module()
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True, is_dynamic=True))
    prepared = prepare_qat_pt2e(gm, q)
    prepared(x).sum().backward()
    converted = convert_pt2e(prepared)
    targets = {n.target for n in converted.graph.nodes if n.op == "call_function"}
    assert torch.ops.quantized_decomposed.choose_qparams.tensor in targets
    assert torch.allclose(converted(x), model(x), atol=0.1)
