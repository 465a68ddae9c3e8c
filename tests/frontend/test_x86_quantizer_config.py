"""X86InductorQuantizer configuration: factories, precedence, skip, dynamic, QAT, coverage."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver, PlaceholderObserver

import inductor_quant.quantizer.x86_inductor_quantizer as xiq
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.quantizer import QuantizationConfig, X86InductorQuantizer
from quantizer_helpers import DYNAMIC, QAT, STATIC, annotate, assert_anchor, assert_float, edge_spec, nodes_of, one, out_spec

aten = torch.ops.aten


def test_default_config_fields_and_cache():
    cfg = xiq.get_default_x86_inductor_quantization_config()
    assert cfg is xiq.get_default_x86_inductor_quantization_config(is_qat=False, is_dynamic=False)
    act, w = cfg.input_activation, cfg.weight
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme, act.is_dynamic) == (
        torch.uint8, 0, 255, torch.per_tensor_affine, False)
    assert (w.dtype, w.quant_min, w.quant_max, w.qscheme, w.ch_axis) == (
        torch.int8, *cpu_info().int8_weight_range, torch.per_channel_symmetric, 0)  # 7 bits without VNNI
    assert cfg.output_activation is act and cfg.bias is None and not cfg.is_qat
    assert isinstance(act.observer_or_fake_quant_ctr(), HistogramObserver)
    assert isinstance(w.observer_or_fake_quant_ctr(), PerChannelMinMaxObserver)
    assert xiq.get_default_x86_inductor_quantization_config(reduce_range=True).input_activation.quant_max == 127


def test_dynamic_and_qat_configs():
    dyn = xiq.get_default_x86_inductor_quantization_config(is_dynamic=True)
    assert dyn.input_activation.is_dynamic and dyn.input_activation.dtype == torch.uint8
    assert dyn.output_activation is None and dyn.weight == STATIC.weight
    assert isinstance(dyn.input_activation.observer_or_fake_quant_ctr(), PlaceholderObserver)
    qat = xiq.get_default_x86_inductor_quantization_config(is_qat=True)
    assert qat.is_qat
    for spec in (qat.input_activation, qat.weight):
        assert isinstance(spec.observer_or_fake_quant_ctr(), FusedMovingAvgObsFakeQuantize)
    xiq.get_default_x86_inductor_quantization_config(is_qat=True, is_dynamic=True).input_activation.observer_or_fake_quant_ctr()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 3)
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        x = self.block(self.features(x))
        y = self.fc(x.mean((2, 3)))
        return F.linear(y, self.w)


X = torch.randn(1, 3, 8, 8)


def _layers(gm):
    c1, c2, c3 = nodes_of(gm, aten.conv2d.default)
    fc, flin = nodes_of(gm, aten.linear.default)
    return c1, c2, c3, fc, flin


def _config_of(node):
    """Which config annotated an anchor (by its weight spec object), None if float."""
    spec = edge_spec(node, node.args[1])
    for cfg in (STATIC, DYNAMIC, QAT, OTHER):
        if spec is not None and spec is cfg.weight and edge_spec(node, node.args[0]) is cfg.input_activation:
            return cfg
    assert spec is None
    return None


OTHER = xiq.get_default_x86_inductor_quantization_config(reduce_range=True)


def test_precedence_name_over_type_over_function_over_global():
    q = (
        X86InductorQuantizer()
        .set_global(STATIC)
        .set_function_type_qconfig(F.linear, DYNAMIC)  # both linears (nn.Linear calls F.linear)
        .set_module_type_qconfig(nn.Linear, OTHER)  # beats function type for self.fc
        .set_module_type_qconfig(nn.Sequential, OTHER)  # encloses all three convs
        .set_module_name_qconfig("features", None)  # beats type: features stay float
        .set_module_name_qconfig("features.2", STATIC)  # longer name beats "features"
    )
    gm, _ = annotate(Net(), X, quantizer=q)
    c1, c2, c3, fc, flin = _layers(gm)
    assert [_config_of(n) for n in (c1, c2, c3, fc, flin)] == [None, STATIC, OTHER, OTHER, DYNAMIC]
    assert_float(one(gm, aten.relu.default))
    assert q.last_report.skipped == {c1.name: "config is None"}
    assert q.config_for(c1) is None and q.config_for(flin) is DYNAMIC


def test_none_global_only_named_modules_quantized():
    q = X86InductorQuantizer().set_module_name_qconfig("fc", STATIC)
    gm, _ = annotate(Net(), X, quantizer=q)
    assert [_config_of(n) for n in _layers(gm)] == [None, None, None, STATIC, None]
    assert q.last_report.annotated["conv"] == 0 and q.last_report.present["conv"] == 3


class MyConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias)


def test_module_type_matches_subclasses_and_xnnpack_style_aliases():
    m = nn.Sequential(MyConv(3, 4, 3), nn.Conv2d(4, 4, 1))
    q = X86InductorQuantizer().set_global(None).set_object_type(nn.Conv2d, STATIC)
    gm, _ = annotate(m, X, quantizer=q)
    assert all(_config_of(c) is STATIC for c in nodes_of(gm, aten.conv2d.default))

    q = X86InductorQuantizer().set_global(STATIC).set_object_type(F.linear, None).set_module_name("block", OTHER)
    gm, _ = annotate(Net(), X, quantizer=q)
    assert [_config_of(n) for n in _layers(gm)] == [STATIC, STATIC, OTHER, None, None]


def test_set_function_type_accepts_aten_ops():
    q = X86InductorQuantizer().set_function_type_qconfig(torch.ops.aten.conv2d.default, STATIC)
    gm, _ = annotate(Net(), X, quantizer=q)
    assert [_config_of(n) for n in _layers(gm)] == [STATIC, STATIC, STATIC, None, None]


def test_get_global_quantization_config_is_what_set_global_set():
    q = X86InductorQuantizer()
    assert q.get_global_quantization_config() is None
    assert q.set_global(STATIC).get_global_quantization_config() is STATIC


class MatMul(nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b) + a @ b


@pytest.mark.parametrize("fn", [torch.matmul, torch.Tensor.matmul], ids=["torch.matmul", "Tensor.matmul"])
def test_a_matmul_function_config_quantizes_matmul(fn):
    """Upstream's way to quantize matmul: set_function_type_qconfig(torch.matmul, config)."""
    a, b = torch.randn(2, 4, 8), torch.randn(2, 8, 4)
    gm, _ = annotate(MatMul(), a, b, quantizer=X86InductorQuantizer().set_global(STATIC))
    assert all(edge_spec(m, m.args[0]) is None for m in nodes_of(gm, aten.matmul.default))  # opt-in only
    q = X86InductorQuantizer().set_global(STATIC).set_function_type_qconfig(fn, STATIC)
    assert q.quantize_matmul
    gm, _ = annotate(MatMul(), a, b, quantizer=q)
    matmuls = nodes_of(gm, aten.matmul.default)
    assert len(matmuls) == 2 and all(edge_spec(m, arg) is STATIC.input_activation for m in matmuls for arg in m.args)
    assert not q.set_function_type_qconfig(fn, None).quantize_matmul


def test_bad_config_arguments_raise():
    q = X86InductorQuantizer()
    with pytest.raises(TypeError, match="QuantizationConfig"):
        q.set_global("static")
    with pytest.raises(TypeError, match="nn.Module subclass"):
        q.set_module_type_qconfig(F.relu, STATIC)
    with pytest.raises(TypeError, match="module_name"):
        q.set_module_name_qconfig(nn.Linear, STATIC)


def test_qat_and_ptq_configs_do_not_mix():
    q = X86InductorQuantizer().set_global(STATIC).set_module_name_qconfig("fc", DYNAMIC)
    with pytest.raises(ValueError, match="cannot mix QAT"):
        q.set_module_type_qconfig(nn.Linear, QAT)
    q.set_global(None).set_module_name_qconfig("fc", None).set_module_name_qconfig("fc", None)
    X86InductorQuantizer().set_global(STATIC).set_global(QAT)  # replacing the only config is fine


def test_mixed_static_and_dynamic():
    q = X86InductorQuantizer().set_global(STATIC).set_module_name_qconfig("fc", DYNAMIC)
    q.set_module_name_qconfig("block", DYNAMIC)  # a dynamic config leaves convs float
    gm, _ = annotate(Net(), X, quantizer=q)
    c1, c2, c3, fc, flin = _layers(gm)
    assert_anchor(fc, DYNAMIC, output=False)
    assert edge_spec(fc, fc.args[0]).is_dynamic
    assert_anchor(flin, STATIC, output=False)  # model output: stays fp32
    assert_float(c3)
    assert q.last_report.skipped == {c3.name: "dynamic config (applies to linear only)"}
    assert q.last_report.patterns == {"conv2d.relu": 1, "conv2d": 1, "linear.dynamic": 1, "linear": 1}


def test_dynamic_config_with_an_output_spec_still_leaves_the_output_float():
    upstream_style = QuantizationConfig(DYNAMIC.input_activation, DYNAMIC.input_activation, DYNAMIC.weight, None)
    gm, _ = annotate(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), torch.randn(2, 4), config=upstream_style)
    for linear in nodes_of(gm, aten.linear.default):
        assert_anchor(linear, DYNAMIC, output=False)


def test_dynamic_linear_takes_no_post_op():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    gm, q = annotate(m, torch.randn(2, 4), config=DYNAMIC)
    assert_anchor(one(gm, aten.linear.default), DYNAMIC, output=False)
    assert_float(one(gm, aten.relu.default))


class ConvBNReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(self.relu(self.bn(self.conv(x)))))


def test_qat_conv_bn_unary_contract():
    """QAT graphs keep batch_norm (training): conv carries x + w, bn nothing, last node the output."""
    gm, q = annotate(ConvBNReLU().train(), X, config=QAT)
    (conv, conv2), (bn, bn2) = nodes_of(gm, aten.conv2d.default), nodes_of(gm, aten.batch_norm.default)
    assert_anchor(conv, QAT, output=False)
    assert bn.meta["quantization_annotation"]._annotated and out_spec(bn) is None and not edge_spec(bn, conv)
    assert out_spec(one(gm, aten.relu.default)) is QAT.output_activation
    assert_anchor(conv2, QAT, output=False)
    assert out_spec(bn2) is None  # the model output: no fake-quant round trip
    assert q.last_report.patterns == {"conv2d.bn.relu": 1, "conv2d.bn": 1}


def test_report_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="inductor_quant.quantizer"):
        _, q = annotate(Net(), X)
    assert "convs 3/3 annotated, linears 2/2 annotated" in caplog.text
    assert q.last_report.as_dict()["annotated"] == {"conv": 3, "linear": 2}


def test_validate_rejects_specs_on_edges_the_node_does_not_consume():
    from inductor_quant.quantizer.quantizer import ANNOTATION_KEY

    gm, q = annotate(Net(), X)
    c1, c2, *_ = _layers(gm)
    c2.meta[ANNOTATION_KEY].input_qspec_map[c1.args[1]] = STATIC.weight
    with pytest.raises(ValueError, match=f"node {c2.name} has input specs"):
        q.validate(gm)


def test_configs_are_quantization_configs():
    assert isinstance(STATIC, QuantizationConfig) and hash(STATIC) == hash(xiq.get_default_x86_inductor_quantization_config())


def test_annotation_report_recounts_any_annotated_graph():
    from inductor_quant.quantizer import XNNPACKQuantizer, annotation_report, get_symmetric_quantization_config

    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_module_name("block", None)
    gm, _ = annotate(Net(), X, quantizer=q)
    rep = annotation_report(gm)
    assert (rep.present["conv"], rep.annotated["conv"], rep.present["linear"], rep.annotated["linear"]) == (3, 2, 2, 2)
    assert list(rep.skipped.values()) == ["no pattern matched"]  # recount alone cannot know why
    assert q.last_report.skipped == {_layers(gm)[2].name: "config is None"}
