"""Weight-only int8 linears (`get_x86_inductor_linear_weight_only_int8_config`): convert leaves
dequantize_per_channel(int8 weight) -> linear(float x); our passes run ATen's
`_weight_int8pack_mm` on the int8 weight, no fp32 copy of it. Builtins off (tests/conftest.py)."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run, float_compute_calls

from inductor_quant import quantize
from inductor_quant.generated_code import weight_only_int8_calls
from inductor_quant.quantizer import (QuantizationConfig, QuantizationSpec, X86InductorQuantizer,
                                      get_default_x86_inductor_quantization_config,
                                      get_x86_inductor_linear_weight_only_int8_config)

dq_per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default


class Mlp(nn.Module):
    """Three linears: with a bias, without one, and on a transposed (non-contiguous) input."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.side = nn.Linear(16, 32), nn.Linear(32, 8, bias=False), nn.Linear(5, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x))), self.side(x.transpose(1, 2))


def weight_only(model, x, config=None, dynamic_shapes=None):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, config or get_x86_inductor_linear_weight_only_int8_config())
    return quantize(model.eval(), (x,), [(x,)], quantizer=quantizer, dynamic_shapes=dynamic_shapes)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    model = Mlp().eval()
    return model, weight_only(model, x), x


def test_convert_keeps_int8_weights_and_float_activations(mlp):
    model, converted, x = mlp
    dqs = [n for n in converted.graph.nodes if n.target is dq_per_channel]
    assert len(dqs) == 3 and all(n.args[0].op == "get_attr" and n.args[-1] is torch.int8 for n in dqs)
    assert not any("quantize_per_tensor" in str(n.target) for n in converted.graph.nodes)  # activations float
    for ref, out in zip(model(x), converted(x)):
        assert (out - ref).abs().max() <= 0.02 * ref.abs().max()  # int8 weights: close to float


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_each_linear_runs_the_int8_weight_kernel(mlp, cpp_wrapper):
    _, converted, x = mlp
    refs, outs, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
    assert weight_only_int8_calls(code) == 3 and not float_compute_calls(code), code
    assert stats["unfused"] == [] and sum(v for k, v in stats["fused"].items() if "woq_int8" in k) == 3, stats
    for ref, out in zip(refs, outs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the same fp32 math, another order


def test_a_dynamic_batch_runs_batch_1_and_64():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 16)
    converted = weight_only(Mlp(), x, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    compiled = torch.compile(converted)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        for batch in (4, 1, 64):
            xb = torch.randn(batch, 5, 16)
            for ref, out in zip(converted(xb), compiled(xb)):
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_weights_with_zero_points_stay_float_and_say_why():
    """`_weight_int8pack_mm` has no weight zero point: an affine int8 weight is not run by it
    (a wrong result otherwise); the layer stays dequantize -> fp32 linear, reported."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    affine = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_affine,
                              ch_axis=0, observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    config = QuantizationConfig(input_activation=None, output_activation=None, weight=affine, bias=None)
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        model[0].weight.add_(0.5)  # all-positive rows: non-zero zero points
    converted = weight_only(model, x, config)
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert weight_only_int8_calls(code) == 0
    assert [u.code for u in stats["unfused"]] == ["woq_form"] and "zero points" in stats["unfused"][0].reason
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_the_layer_is_reported_and_right(mlp):
    _, converted, x = mlp
    refs, outs, code, stats = compile_and_run(converted, (x,), bf16=True)
    assert weight_only_int8_calls(code) == 0 and stats["unfused"], stats  # not yet a bf16 form: said so
    for ref, out in zip(refs, outs):
        assert (out.float() - ref.float()).abs().max() <= 0.02 * ref.float().abs().max() + 1e-2


def test_mixed_with_static_int8_layers():
    """The recipe of a decoder: int8 weight-only linears beside static int8 convs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_type_qconfig(nn.Linear, get_x86_inductor_linear_weight_only_int8_config())
    converted = quantize(model, (x,), [(x,)], quantizer=quantizer)
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert weight_only_int8_calls(code) == 1 and stats["unfused"] == [], (stats, code)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-5
