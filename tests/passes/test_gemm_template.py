"""Our int8 linears under Inductor's C++ GEMM template (max-autotune with the CPP backend, part
of `inductor_quant.fast_options()` on AMX CPUs, of `template_options()` on AMX / AVX-512 VNNI): generated int8 micro-kernels
where the CPU has them, oneDNN elsewhere, and right results either way."""

import pytest
import torch
from torch import nn

from inductor_quant import fast_options, quantize
from inductor_quant.benchmarks.runner import agreement
from inductor_quant.benchmarks.zoo import EncoderLayer
from inductor_quant.compile_options import GEMM_TEMPLATE_ISA, inductor_settings, skip_module_guards, template_options
from inductor_quant.generated_code import count, float_compute_calls, int8_gemm_template_calls
from inductor_quant.kernels.cpu import CpuInfo, cpu_info

from compile_utils import compile_and_run

TEMPLATE_HERE = any(f in cpu_info().features for f in GEMM_TEMPLATE_ISA)


class TwoPostNormLayers(nn.Module):
    """Two BERT layers: the second's residual adds read the first's layer-norm output, the form
    on which the template's in-place `sum` came out at SQNR -3 dB."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(32, 2, 64, pre_norm=False) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    x = torch.randn(2, 128, 32)  # 256 rows: fewer call our kernel instead (passes/own_calls.py, TEMPLATE_FROM_ROWS)
    return quantize(TwoPostNormLayers().eval(), (x,), [(x,)]), (x,)


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_template_linears_are_int8_and_right(converted, cpp_wrapper):
    model, inputs = converted
    # the template alone (fast_options() adds ATen, and autotuning may then keep oneDNN for a layer)
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP"):
        ref, out, code, stats = compile_and_run(model, inputs, cpp_wrapper=cpp_wrapper)
    assert stats["unfused"] == [] and not float_compute_calls(code), code
    linears = 8  # per layer: Q/K/V merged into one GEMM, the output projection, two MLP linears
    if TEMPLATE_HERE:
        assert int8_gemm_template_calls(code) == linears and count(code, "qlinear_pointwise") == 0, code
    else:  # no int8 micro-kernel for this CPU: Inductor keeps the oneDNN calls
        assert int8_gemm_template_calls(code) == 0 and count(code, "qlinear_pointwise") == linears, code
    assert agreement(ref, out)[0] > 40  # the in-place sum under the template gave -3 dB


def _cpu(*features):
    return CpuInfo("test CPU", frozenset(features), "", "AVX512")


def test_fast_options_use_the_template_only_where_it_was_faster():
    """AMX: the template's autotune; AVX-512 VNNI (its micro-kernels, but it was not faster there:
    compile_options.py) and below: freezing + the C++ wrapper. template_options() asks for the
    template wherever it has int8 micro-kernels. fast_options() adds Dynamo's guard filter on every
    CPU (tests/e2e/test_fast_options.py)."""
    amx, vnni = _cpu("avx2", "avx512f", "avx512_vnni", "amx_int8"), _cpu("avx2", "avx512f", "avx512_vnni")
    assert inductor_settings(fast_options(amx)) == template_options(amx) == template_options(vnni)
    assert template_options(vnni)["max_autotune"] is True and template_options(vnni)["max_autotune_gemm_backends"] == "CPP,ATEN"
    for features in (("avx2",), ("avx2", "avx_vnni"), ("avx2", "avx512f"), ("avx2", "avx512f", "avx512_vnni")):
        assert fast_options(_cpu(*features)) == {"freezing": True, "cpp_wrapper": True,
                                                 "guard_filter_fn": skip_module_guards}
    for features in (("avx2",), ("avx2", "avx_vnni"), ("avx2", "avx512f")):
        assert template_options(_cpu(*features)) == {"freezing": True, "cpp_wrapper": True}


class RequantizedResidual(nn.Module):
    """linear + add whose sum is requantized for the next linear: the form whose int8 extra input
    the template's lowering rejects (a compile error), so the quantize stays apart under it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(32, 32) for _ in range(3))

    def forward(self, x):
        y = self.b(x)
        return self.c(self.a(y) + y)


def test_requantized_linear_add_compiles_under_the_template():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    model = quantize(RequantizedResidual().eval(), (x,), [(x,)])
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP"):
        ref, out, code, stats = compile_and_run(model, (x,))
    assert stats["unfused"] == [] and stats["fused"].get("post.binary.add") == 1, stats
    assert int8_gemm_template_calls(code) + count(code, "qlinear_pointwise") == 3, code
    assert agreement(ref, out)[0] > 40


@pytest.mark.skipif(not TEMPLATE_HERE, reason="Inductor's C++ GEMM template has no int8 micro-kernel for this CPU")
def test_the_template_still_computes_the_in_place_sum_wrong(converted, monkeypatch):
    """Pins the torch bug kernel_limits.gemm_template_may_run works around: with the rule off (the
    linears' residual adds emitted as in-place `sum` under the template) and Q, K, V as three
    GEMMs (the merge off), the same two layers come out wrong, though every `sum` goes into a
    tensor no later op reads in the graph (the template writes it through a view that Inductor's
    scheduling does not order after the other readers). When a torch release fixes it, this
    fails: drop the rule then."""
    import importlib

    monkeypatch.setattr(importlib.import_module("inductor_quant.passes.accumulators"), "gemm_template_may_run",
                        lambda: False)
    monkeypatch.setattr(importlib.import_module("inductor_quant.passes.registry"), "merge_sibling_linears",
                        lambda graph: [])
    # and the norms as Inductor's kernels (passes/norms.py): our norm call writes the accumulator
    # as an output of its own, which the template's scheduling happens to order right
    monkeypatch.setattr(importlib.import_module("inductor_quant.passes.norms"), "route", lambda graph: 0)
    model, inputs = converted
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP", fx_graph_cache=False):
        ref, out, code, stats = compile_and_run(model, inputs)
    assert int8_gemm_template_calls(code) == 12, code
    assert agreement(ref, out)[0] < 20, agreement(ref, out)  # -3 dB on torch 2.13


def test_dynamically_quantized_linears_are_right_under_the_template():
    """Run-time activation qparams (choose_qparams gives a float64 scale) reach the template as
    float32: it read the float64 scale as float32 and the outputs came out ~1e36 (fuzzer finding,
    fast-fp32-static)."""
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16)
    config = get_default_x86_inductor_quantization_config(is_dynamic=True)
    two_linears = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    model = quantize(two_linears, (x,), [(x,)], quantizer=X86InductorQuantizer().set_global(config))
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP"):
        ref, out, code, stats = compile_and_run(model, (x,))
    assert stats["unfused"] == [] and stats["fused"].get("qlinear.dynamic.nd") == 2, stats
    templates = int8_gemm_template_calls(code)
    assert (templates >= 1) == TEMPLATE_HERE and templates + count(code, "qlinear_pointwise") == 2, code
    assert agreement(ref, out)[0] > 40


class LinearCalledTwice(nn.Module):
    """One quantized Linear on two inputs: two int8 GEMMs on one weight."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(16, 16)

    def forward(self, x):
        return self.l(x) + self.l(torch.relu(x) * 2)


def test_a_linear_called_twice_stays_fp32_under_the_template_and_compiles():
    """Fused, the template's lowering loses the shared packed weight and the compile fails
    (torch 2.13-2.14); both calls stay dq -> fp32 linear under it, reported, and fuse without it."""
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    model = quantize(LinearCalledTwice().eval(), (x,), [(x,)])
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"):
        ref, out, code, stats = compile_and_run(model, (x,))
    assert [u.code for u in stats["unfused"]] == ["template_shared_weight"] * 2, stats
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    ref, out, code, stats = compile_and_run(model, (x,))  # no template: both fuse
    assert stats["unfused"] == [] and count(code, "qlinear_pointwise") == 2, (stats, code)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
