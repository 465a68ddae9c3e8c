"""The PyTorch PT2E tutorials users follow (PTQ, QAT, writing a Quantizer, the X86 Inductor backend), with
only the import / capture lines changed."""

import copy

import torch

import inductor_quant
from flow_helpers import TinyResNet, call_targets, randomize_bn, sqnr

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


def test_x86_inductor_ptq_tutorial_resnet_style():
    # --- tutorial, with the import / capture lines changed ---
    from inductor_quant import prepare_pt2e, convert_pt2e
    import inductor_quant.quantizer.x86_inductor_quantizer as xiq
    from inductor_quant.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    example_inputs = (x,)
    with torch.no_grad():
        exported_model = torch.export.export(model, example_inputs).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared_model = prepare_pt2e(exported_model, quantizer)
    prepared_model(*example_inputs)
    converted_model = convert_pt2e(prepared_model)
    # --- checks ---
    weighted = [n for n in converted_model.graph.nodes if n.target in (aten.conv2d.default, aten.linear.default)]
    assert len(weighted) == 6
    for n in weighted:
        x_dq, w_dq = n.args[0], n.args[1]
        assert w_dq.target == qd.dequantize_per_channel.default and w_dq.args[3] == 0
        assert w_dq.args[0].op == "get_attr" and converted_model.get_buffer(w_dq.args[0].target).dtype == torch.int8
        assert x_dq.target == qd.dequantize_per_tensor.default and x_dq.args[-1] == torch.uint8
        assert x_dq.args[0].target == qd.quantize_per_tensor.default
    assert aten.batch_norm.default not in call_targets(converted_model)
    with torch.no_grad():
        assert sqnr(model(x), converted_model(x)) >= 20


def test_ptq_tutorial_xnnpack_linear():
    from inductor_quant import prepare_pt2e, convert_pt2e
    from inductor_quant.quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(5, 10)

        def forward(self, x):
            return self.linear(x)

    example_inputs = (torch.randn(1, 5),)
    m = M().eval()
    float_out = m(*example_inputs)
    m = torch.export.export(m, example_inputs).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    m = prepare_pt2e(m, quantizer)
    m(*example_inputs)  # calibration
    m = convert_pt2e(m)
    assert qd.quantize_per_tensor.default in call_targets(m)
    assert sqnr(float_out, m(*example_inputs)) >= 20


def test_x86_qat_tutorial():
    from inductor_quant import prepare_qat_pt2e, convert_pt2e
    import inductor_quant.quantizer.x86_inductor_quantizer as xiq
    from inductor_quant.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x)

    example_inputs = (torch.randn(1, 64),)
    exported_model = torch.export.export(M(), example_inputs).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    prepared_model = prepare_qat_pt2e(exported_model, quantizer)
    prepared_model(*example_inputs)  # "train omitted"
    converted_model = convert_pt2e(prepared_model)
    inductor_quant.move_exported_model_to_eval(converted_model)
    assert qd.dequantize_per_channel.default in call_targets(converted_model)


def test_quantize_helper_default_quantizer_and_per_module_skip():
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(2, 3, 32, 32)
    q = inductor_quant.quantize(model, (x,), [x, torch.randn_like(x)])
    assert sqnr(model(x), q(x)) >= 20
    assert sum(t == qd.dequantize_per_channel.default for t in call_targets(q)) == 6

    skip_fc = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    skip_fc.set_module_name_qconfig("fc", None)
    q2 = inductor_quant.quantize(copy.deepcopy(model), x, [x], quantizer=skip_fc)
    fc = next(n for n in q2.graph.nodes if n.target == aten.linear.default)
    assert fc.args[1].op == "get_attr"  # fc weight stays fp32
    assert sum(t == qd.dequantize_per_channel.default for t in call_targets(q2)) == 5


def test_quantize_helper_dynamic_batch_and_exported_program_reexport():
    from torch.export import Dim

    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(2, 3, 32, 32)
    q = inductor_quant.quantize(model, (x,), (torch.randn(2, 3, 32, 32) for _ in range(2)),
                                dynamic_shapes={"x": {0: Dim("batch")}})
    x5 = torch.randn(5, 3, 32, 32)
    assert sqnr(model(x5), q(x5)) >= 20
    ep = torch.export.export(q, (x5,), dynamic_shapes={"x": {0: Dim("batch")}})
    torch.testing.assert_close(ep.module()(x), q(x), rtol=0, atol=0)


def test_ptq_tutorial_calibrate_calls_model_eval():
    """The PTQ tutorial's calibrate() calls model.eval() on the prepared model; that must work
    (torch's exported modules raise) and mean move_exported_model_to_eval."""
    from inductor_quant import prepare_pt2e, convert_pt2e
    from flow_helpers import BackendQuantizer, ConvBNModel

    def calibrate(model, data_loader):
        model.eval()
        with torch.no_grad():
            for image, target in data_loader:
                model(image)

    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_pt2e(torch.export.export(ConvBNModel().train(), (x,)).module(), BackendQuantizer())
    calibrate(prepared, [(x, None)])
    torch.testing.assert_close(prepared(x), prepared(x))  # dropout is off after .eval()
    prepared.train()
    assert any(n.target == aten.dropout.default and n.args[2] is True for n in prepared.graph.nodes)
    prepared.eval()
    converted = convert_pt2e(copy.deepcopy(prepared))
    converted.eval()
    torch.testing.assert_close(converted(x), converted(x))
