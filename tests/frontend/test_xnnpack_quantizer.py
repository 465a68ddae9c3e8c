"""XNNPACKQuantizer / get_symmetric_quantization_config: the tutorials' generic quantizer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PlaceholderObserver

from quantizer_helpers import annotate, assert_anchor, assert_float, edge_spec, nodes_of, one, out_spec

aten = torch.ops.aten


def test_tutorial_import_lines():
    # torch.ao.quantization -> inductor_quant in the tutorials' import lines
    from inductor_quant.quantizer import XNNPACKQuantizer, get_symmetric_quantization_config  # noqa: F401
    from inductor_quant.quantizer.xnnpack_quantizer import XNNPACKQuantizer as X2, get_symmetric_quantization_config as g2

    assert X2 is XNNPACKQuantizer and g2 is get_symmetric_quantization_config
    import inductor_quant.quantizer.x86_inductor_quantizer as xiq
    from inductor_quant.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    assert xiq.X86InductorQuantizer is X86InductorQuantizer
    xiq.get_default_x86_inductor_quantization_config(is_qat=True, is_dynamic=False)
    import inductor_quant.quantizer as pkg

    for name in ("Quantizer", "QuantizationSpec", "SharedQuantizationSpec", "FixedQParamsQuantizationSpec",
                 "DerivedQuantizationSpec", "QuantizationAnnotation", "QuantizationConfig", "ComposableQuantizer",
                 "EdgeOrNode", "X86InductorQuantizer", "get_default_x86_inductor_quantization_config",
                 "XNNPACKQuantizer", "get_symmetric_quantization_config"):
        assert name in pkg.__all__ and hasattr(pkg, name), name


def test_symmetric_config_fields():
    from inductor_quant.quantizer import get_symmetric_quantization_config as sym

    cfg = sym()
    assert cfg is sym(is_per_channel=False)
    act, w = cfg.input_activation, cfg.weight
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme) == (torch.int8, -128, 127, torch.per_tensor_affine)
    assert (w.dtype, w.quant_min, w.quant_max, w.qscheme) == (torch.int8, -127, 127, torch.per_tensor_symmetric)
    assert isinstance(act.observer_or_fake_quant_ctr(), HistogramObserver)
    assert isinstance(w.observer_or_fake_quant_ctr(), MinMaxObserver)
    assert cfg.output_activation is act and cfg.bias is None
    pc = sym(is_per_channel=True).weight
    assert pc.qscheme == torch.per_channel_symmetric and pc.ch_axis == 0
    dyn = sym(is_dynamic=True)
    assert dyn.input_activation.is_dynamic and dyn.output_activation is None
    assert isinstance(dyn.input_activation.observer_or_fake_quant_ctr(), PlaceholderObserver)
    assert isinstance(sym(is_qat=True).input_activation.observer_or_fake_quant_ctr(), FusedMovingAvgObsFakeQuantize)
    assert sym(act_qmin=-127).input_activation.quant_min == -127


def _xnn(model, *args, **cfg_kwargs):
    from inductor_quant.quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(**cfg_kwargs)
    return annotate(model, *args, quantizer=XNNPACKQuantizer().set_global(cfg)) + (cfg,)


def test_conv_relu_fused_other_unary_not():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Hardswish())
    gm, q, cfg = _xnn(m, torch.randn(1, 3, 8, 8))
    c1, c2 = nodes_of(gm, aten.conv2d.default)
    assert_anchor(c1, cfg, output=False)
    assert out_spec(one(gm, aten.relu.default)) is cfg.output_activation
    assert_anchor(c2, cfg, output=True)
    assert_float(one(gm, aten.hardswish.default))
    assert q.last_report.patterns == {"conv2d.relu": 1, "conv2d": 1}


def test_standalone_add_mul_and_add_relu():
    class M(nn.Module):
        def forward(self, a, b):
            return F.relu(a + b), a * b, a + 2.0

    a, b = torch.randn(2, 4), torch.randn(2, 4)
    gm, q, cfg = _xnn(M(), a, b)
    add, mul, add_scalar = nodes_of(gm, aten.add.Tensor, aten.mul.Tensor)
    pa, pb = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in (add, mul):
        assert edge_spec(node, pa) is cfg.input_activation and edge_spec(node, pb) is cfg.input_activation
    assert out_spec(add) is None and out_spec(one(gm, aten.relu.default)) is cfg.output_activation
    assert out_spec(mul) is cfg.output_activation
    assert edge_spec(add_scalar, pa) is cfg.input_activation  # scalar operand is not an edge
    assert q.last_report.patterns == {"add.relu": 1, "add": 1, "mul": 1}


def test_tutorial_configuration_chain():
    from inductor_quant.quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    class Bar(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    class Foo(nn.Module):
        def __init__(self):
            super().__init__()
            self.bar = Bar()

        def forward(self, x):
            return self.bar(x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.foo, self.fc = nn.Conv2d(3, 4, 1), Foo(), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.foo(self.conv(x).mean((2, 3))))

    per_channel = get_symmetric_quantization_config(is_per_channel=True)
    qconfig_opt = get_symmetric_quantization_config()
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(qconfig_opt).set_object_type(torch.nn.Conv2d, per_channel).set_object_type(
        torch.nn.functional.linear, None
    ).set_module_name("foo.bar", qconfig_opt)
    gm, _ = annotate(M(), torch.randn(1, 3, 4, 4), quantizer=quantizer)
    conv = one(gm, aten.conv2d.default)
    bar_fc, fc = nodes_of(gm, aten.linear.default)
    assert_anchor(conv, per_channel, output=True)
    assert_anchor(bar_fc, qconfig_opt, output=True)
    assert_float(fc)


def test_qat_conv_bn_relu():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    gm, q, cfg = _xnn(m, torch.randn(2, 3, 8, 8), is_qat=True, is_per_channel=True)
    assert_anchor(one(gm, aten.conv2d.default), cfg, output=False)
    assert out_spec(one(gm, aten.relu.default)) is cfg.output_activation
    assert q.last_report.patterns == {"conv2d.bn.relu": 1}
