"""Weight-only int8 linears (`get_x86_inductor_linear_weight_only_int8_config`): convert leaves
dequantize_per_channel(int8 weight) -> linear(float x). The compile runs each as our
`iq_onednn.woq_linear` (kernels/native.py: oneDNN's matmul with the weight kept int8 and converted
in registers), fp32 or bf16 under autocast, every linear form; where our kernel layer is off or
cannot load, the float linear on the dequantized weight (freezing folds it) runs and
`stats()["unfused"]` says why. Builtins off (tests/conftest.py)."""

import re

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run, compile_once_and_run
from test_fp16_weight import Mlp  # the same two linears: up with a bias, relu, down without

import inductor_quant.passes as iq_passes
from inductor_quant.passes.install import reset_warning
from inductor_quant import quantize
from inductor_quant.kernels import probe
from inductor_quant.generated_code import float_compute_calls, onednn_int8_calls, weight_only_int8_calls
from inductor_quant.quantizer import (X86InductorQuantizer, get_default_x86_inductor_quantization_config,
                                      get_x86_inductor_linear_weight_only_int8_config)

dq_per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    model = Mlp().eval()
    quantizer = X86InductorQuantizer().set_module_type_qconfig(nn.Linear,
                                                               get_x86_inductor_linear_weight_only_int8_config())
    return model, quantize(model, (x,), [(x,)], quantizer=quantizer), x


def test_convert_keeps_int8_weights_and_float_activations(mlp):
    model, converted, x = mlp
    dqs = [n for n in converted.graph.nodes if n.target is dq_per_channel]
    assert len(dqs) == 2 and all(n.args[0].op == "get_attr" and n.args[-1] is torch.int8 for n in dqs)
    assert [n.args[4:6] for n in dqs] == [(-127, 127)] * 2  # symmetric: the zero points are 0
    assert not any("quantize_per_tensor" in str(n.target) for n in converted.graph.nodes)  # activations float
    assert (converted(x) - model(x)).abs().max() <= 0.02 * model(x).abs().max()  # int8 weights: close to float


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_compile_calls_our_weight_only_kernel(mlp, bf16, cpp_wrapper):
    _, converted, x = mlp
    ref, out, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper, bf16=bf16)
    if not probe.weight_only_linear_builds(torch.bfloat16 if bf16 else torch.float32):  # bf16 without AVX-512
        assert weight_only_int8_calls(code) == 0 and [u.code for u in stats["unfused"]] == ["woq_unbuildable"] * 2
        torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
        return
    assert weight_only_int8_calls(code) == 2 and not float_compute_calls(code), code
    assert stats["unfused"] == [], stats
    assert sum(v for k, v in stats["fused"].items() if k.startswith("linear.woq_int8")) == 2, stats
    assert stats["kernels"] == {"woq_linear": 2}, stats
    # fp32: the scale applied after the sum instead of to each weight; bf16: the eager model rounds
    # each dequantized weight to bf16, ours keeps the int8 value exact and scales the fp32 sum
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_without_our_kernel_layer_the_float_linear_runs_and_is_reported(mlp):
    assert_float_without_our_kernel_layer(*mlp[1:], linears=2)


def assert_float_without_our_kernel_layer(converted, x, linears):
    """With our kernel layer off (as AOTInductor), weight-only int8 linears stay the float linear
    on the dequantized weight, each reported; the output is eager's."""
    assert iq_passes.set_own_kernels(False)
    try:
        ref, out, code, stats = compile_and_run(converted, (x,))
    finally:
        iq_passes.set_own_kernels(True)
    assert weight_only_int8_calls(code) == 0 and not onednn_int8_calls(code), code
    assert [u.code for u in stats["unfused"]] == ["act_not_dequantized"] * linears, stats
    assert "weight-only int8" in stats["unfused"][0].reason
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_beside_static_int8_layers_those_still_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_type_qconfig(nn.Linear, get_x86_inductor_linear_weight_only_int8_config())
    converted = quantize(model, (x,), [(x,)], quantizer=quantizer)
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert sum(onednn_int8_calls(code).values()) == 1 and weight_only_int8_calls(code) == 1, code
    assert stats["unfused"] == [], stats
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-5


def test_freezing_only_as_a_compile_option_warns_with_the_fix(mlp):
    """`torch.compile(m, options={"freezing": True})` alone: Dynamo reads the global flag when it
    traces, so the weights arrive as plain inputs and nothing is frozen. The weight-only rule
    cannot read the zero points and leaves the linears float; the user is told how to fix it."""
    _, converted, x = mlp
    reset_warning()
    torch._dynamo.reset()
    with torch._inductor.config.patch(freezing=False), torch.no_grad(), \
            pytest.warns(UserWarning, match=r"freezing given as a torch.compile option.*freezing = True"):
        torch.compile(converted, options={"freezing": True})(x)
    with torch._inductor.config.patch(freezing=True), torch.no_grad(), iq_passes.isolated_stats():
        torch._dynamo.reset()
        torch.compile(converted, options={"freezing": True})(x)  # the fix: the global flag
        assert iq_passes.stats()["kernels"].get("woq_linear") == 2 or not probe.weight_only_linear_builds(torch.float32)


class Siblings(nn.Module):
    """A decoder layer's shapes: q, k, v and gate, up read one input each (no biases, as Gemma)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(32, n, bias=False) for n in (32, 16, 16))
        self.gate, self.up = (nn.Linear(32, 48, bias=False) for _ in range(2))

    def forward(self, x):
        qkv = self.q(x)[..., :16] * self.k(x) + self.v(x)
        h = x + torch.cat([qkv, qkv], -1)
        return torch.relu(self.gate(h)) * self.up(h)


def _woq_int8(model, x, dynamic_shapes=None):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(nn.Linear,
                                                               get_x86_inductor_linear_weight_only_int8_config())
    return quantize(model.eval(), (x,), [(x,)], quantizer=quantizer, dynamic_shapes=dynamic_shapes)


@pytest.mark.parametrize("rows", [1, 6], ids=["decode", "prefill"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_siblings_on_one_input_become_one_call(bf16, rows):
    if not probe.weight_only_linear_builds(torch.bfloat16 if bf16 else torch.float32):
        pytest.skip("our weight-only kernel does not build for this dtype on this CPU")
    torch.manual_seed(0)
    x = torch.randn(1, rows, 32)
    ref, out, code, stats = compile_and_run(_woq_int8(Siblings(), x), (x,), bf16=bf16)
    assert weight_only_int8_calls(code) == 2, code  # q, k, v in one; gate, up in another
    assert_siblings_merged(stats, "woq_linear", out, ref, bf16)


def assert_siblings_merged(stats, kernel, out, ref, bf16):
    """Siblings' stats: two merges (q, k, v; gate, up) absorbing three calls, all five counted as
    lowered to `kernel`, nothing unfused; the output as eager's (bf16: within its rounding)."""
    assert stats["fused"].get("merge.sibling_woq_linears") == 2, stats
    assert stats["fused"].get("merge.sibling_woq_linears.absorbed") == 3, stats
    assert stats["kernels"] == {kernel: 5} and stats["unfused"] == [], stats
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_siblings_merge_under_a_dynamic_token_dim():
    """The slices are of the (static) output width: a symbolic token dim (prefill) merges too."""
    if not probe.weight_only_linear_builds(torch.float32):
        pytest.skip("our weight-only kernel does not build on this CPU")
    torch.manual_seed(0)
    x = torch.randn(1, 6, 32)
    converted = _woq_int8(Siblings(), x, dynamic_shapes=({1: torch.export.Dim("tokens", min=2, max=64)},))
    pairs, code, stats = compile_once_and_run(converted, [(x,), (torch.randn(1, 9, 32),), (torch.randn(1, 3, 32),)])
    graphs = code.count("# AOT ID")  # run_and_get_code may compile the same dynamic graph again
    assert re.search(r"\(1, s\d+, 32\)", code), code  # the token dim is symbolic in the compiled graph
    assert weight_only_int8_calls(code) == 2 * graphs, code
    assert stats["fused"].get("merge.sibling_woq_linears") == 2 * graphs, stats
    for ref, out in pairs:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
