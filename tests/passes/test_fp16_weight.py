"""fp16-weight linears (`get_x86_inductor_linear_dynamic_fp16_config`, upstream's name): convert
rounds each weight through fp16, our passes run oneDNN's fp32 x fp16 linear on the weight
prepacked at freezing, a following relu folded in. Builtins off (tests/conftest.py)."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run, float_compute_calls, prepacks_at_runtime

from inductor_quant import quantize
from inductor_quant.generated_code import onednn_fp16_calls, onednn_int8_calls
from inductor_quant.quantizer.x86_inductor_quantizer import (X86InductorQuantizer,
                                                             get_default_x86_inductor_quantization_config,
                                                             get_x86_inductor_linear_dynamic_fp16_config)

no_fuse = torch.ops.quantized_decomposed.convert_element_type.no_fuse


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 8, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class ConvMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.mlp = nn.Conv2d(3, 16, 3), Mlp()

    def forward(self, x):
        return self.mlp(self.conv(x).mean((2, 3)))


def fp16_linears(model, x, global_int8=False):
    quantizer = X86InductorQuantizer()
    if global_int8:
        quantizer.set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_type_qconfig(nn.Linear, get_x86_inductor_linear_dynamic_fp16_config())
    return quantize(model.eval(), (x,), [(x,)], quantizer=quantizer)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16)
    model = Mlp()
    return model, fp16_linears(model, x), x


def test_convert_rounds_each_weight_through_fp16(mlp):
    model, converted, x = mlp
    rounds = [(n.args[0].op, n.args[1]) for n in converted.graph.nodes if n.target is no_fuse]
    assert rounds == [("get_attr", torch.float16), ("call_function", torch.float32)] * 2, converted.graph
    up, down = (m.weight.half().float() for m in (model.up, model.down))  # what the fp16 round trip means
    expected = nn.functional.linear(torch.relu(nn.functional.linear(x, up, model.up.bias)), down)
    assert torch.equal(converted(x), expected)


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
def test_each_linear_is_one_onednn_fp16_call_relu_folded(mlp, cpp_wrapper):
    _, converted, x = mlp
    ref, out, code, stats = compile_and_run(converted, [x], cpp_wrapper=cpp_wrapper)
    assert onednn_fp16_calls(code) == {"linear_relu_dynamic_fp16": 1, "linear_dynamic_fp16": 1}, code
    assert not float_compute_calls(code) and not prepacks_at_runtime(code), code
    assert stats == {"fused": {"linear.fp16_weight.relu.nd": 1, "linear.fp16_weight.nd.nobias": 1}, "unfused": [],
                     "kernels": {}}  # not our kernel layer's: oneDNN's fp32 x fp16 linear
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # fp32 math on the same fp16 weights


def test_mixed_with_int8_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    converted = fp16_linears(ConvMlp(), x, global_int8=True)
    ref, out, code, stats = compile_and_run(converted, [x])
    assert onednn_int8_calls(code) == {"qconv_pointwise": 1}, code
    assert onednn_fp16_calls(code) == {"linear_relu_dynamic_fp16": 1, "linear_dynamic_fp16": 1}, code
    assert stats["unfused"] == [], stats
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_conv_given_the_fp16_config_stays_fp32_and_is_reported():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    converted = quantize(conv, (x,), [(x,)],
                         quantizer=X86InductorQuantizer().set_global(get_x86_inductor_linear_dynamic_fp16_config()))
    ref, out, code, stats = compile_and_run(converted, [x])
    assert [(u.op, u.code) for u in stats["unfused"]] == [("conv", "fp16_weight_form")], stats
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_under_bf16_autocast_autocast_decides_and_the_report_says_so(mlp):
    _, converted, x = mlp
    ref, out, code, stats = compile_and_run(converted, [x], bf16=True)
    assert not onednn_fp16_calls(code)
    assert {u.code for u in stats["unfused"]} == {"fp16_weight_autocast"}, stats
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
