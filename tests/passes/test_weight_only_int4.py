"""Weight-only int4 linears (`get_x86_inductor_linear_weight_only_int4_config(group_size)`): convert
keeps 4-bit values in an int8 constant seen as [out * in / group, group] and leaves
dequantize_per_channel -> reshape [out, in] -> linear(float x). The compile packs the weight (two
values a byte, at freezing) and runs our `iq_onednn.woq_int4_linear` (kernels/native.py), or torch's
int4 CPU GEMM without our kernel layer, fp32 or bf16 under autocast, Python or C++ wrapper, one
row (a decode step) or many, static or dynamic batch; a linear it cannot take stays float on the
dequantized weight and `stats()["unfused"]` says why. Builtins off (tests/conftest.py)."""

import contextlib

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run, compile_once_and_run, prepacks_at_runtime
from test_weight_only_int8 import Siblings, assert_siblings_merged  # q, k, v and gate, up on one input (in 32: one group)

from inductor_quant import quantize
import inductor_quant.passes as iq_passes
from inductor_quant.generated_code import float_compute_calls, weight_only_int4_calls
from inductor_quant.numerics import Agreement
from inductor_quant.quantizer import X86InductorQuantizer, get_x86_inductor_linear_weight_only_int4_config

dq_per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default


class Mlp(nn.Module):
    """up (bias) -> relu -> down (no bias); `down_out` 8 is a width torch's int4 GEMM does not take."""

    def __init__(self, down_out=16):
        super().__init__()
        self.up, self.down = nn.Linear(64, 32), nn.Linear(32, down_out, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _int4(model, x, group=32, dynamic_shapes=None, **config):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_x86_inductor_linear_weight_only_int4_config(group, **config))
    return quantize(model, (x,), [(x,)], quantizer=quantizer, dynamic_shapes=dynamic_shapes)


def _mlp_on(*shape):
    """(float model, int4-converted model, input) for the Mlp on an input of `shape`."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model = Mlp().eval()
    return model, _int4(model, x), x


@pytest.fixture(scope="module")
def mlp():
    return _mlp_on(2, 5, 64)


@pytest.fixture(scope="module")
def decode_row():
    """The same layers on one row [1, 1, 64]: a decode step at batch 1."""
    return _mlp_on(1, 1, 64)


def test_convert_keeps_4bit_groups_and_float_activations(mlp):
    model, converted, x = mlp
    dqs = [n for n in converted.graph.nodes if n.target is dq_per_channel]
    assert [tuple(n.args[4:7]) for n in dqs] == [(-8, 7, torch.int8)] * 2
    # the constants: [out * in / 32, 32] int8 in [-8, 7], viewed back to each weight's [out, in]
    consts = [getattr(converted, n.args[0].target) for n in dqs]
    assert [tuple(c.shape) for c in consts] == [(32 * 64 // 32, 32), (16 * 32 // 32, 32)]
    assert all(c.dtype is torch.int8 and c.min() >= -8 and c.max() <= 7 for c in consts)
    assert [list(next(iter(n.users)).args[1]) for n in dqs] == [[32, 64], [16, 32]]
    assert not any("quantize_per_tensor" in str(n.target) for n in converted.graph.nodes)
    with torch.no_grad():
        assert Agreement().add(model(x), converted(x)).sqnr > 15  # dB: 4 bits, one scale per 32 weights


def test_a_width_that_is_not_whole_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of group_size=32"):
        _int4(nn.Linear(40, 16).eval(), torch.randn(2, 40))


@contextlib.contextmanager
def _kernels(kernel):
    """"ours": our kernel layer on (the default); "torch": off, so torch's int4 GEMM runs."""
    assert iq_passes.set_own_kernels(kernel == "ours")
    try:
        yield
    finally:
        iq_passes.set_own_kernels(True)


@pytest.mark.parametrize("kernel", ["ours", "torch"])
@pytest.mark.parametrize("rows", [10, 1], ids=["prompt", "decode_row"])
@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_compile_calls_an_int4_gemm(mlp, decode_row, bf16, cpp_wrapper, rows, kernel):
    _, converted, x = mlp if rows > 1 else decode_row
    with _kernels(kernel):
        ref, out, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert weight_only_int4_calls(code, kernel) == 2 and not float_compute_calls(code), code
    assert not prepacks_at_runtime(code) and "bitwise_or" not in code, code  # packed once, at freezing
    assert stats["unfused"] == [], stats
    assert stats["kernels"] == ({"woq_int4_linear": 2} if kernel == "ours" else {}), stats  # our layer's calls
    # fp32: the same products summed in another order; bf16: the eager model rounds each
    # dequantized weight to bf16, the kernel the product
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_dynamic_batch():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 64)
    batch = torch.export.Dim("batch", min=1, max=16)
    converted = _int4(Mlp().eval(), x, dynamic_shapes=({0: batch},))
    pairs, code, stats = compile_once_and_run(converted, [(torch.randn(b, 7, 64),) for b in (3, 1, 5)])
    assert weight_only_int4_calls(code) >= 2 and weight_only_int4_calls(code) % 2 == 0, code  # 2 per graph
    assert stats["unfused"] == [], stats
    for ref, out in pairs:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_a_width_torchs_gemm_does_not_take_stays_float_and_is_reported():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    converted = _int4(Mlp(down_out=8).eval(), x)
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert weight_only_int4_calls(code) == 1, code  # up runs int4; down (8 outputs) does not
    assert [u.code for u in stats["unfused"]] == ["woq_int4_geometry"], stats
    assert "[8, 32] in groups of 32" in stats["unfused"][0].reason
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


ZERO_POINTS = {"int": dict(symmetric=False), "float": dict(zero_point_domain="float")}


@pytest.mark.parametrize("kernel", ["ours", "torch"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("domain", list(ZERO_POINTS))
def test_zero_points_per_group_run_the_same_gemm(domain, bf16, kernel):
    """symmetric=False: weights not centred on 0 get a zero point per group (their min and max
    map to -8 and 7); zero_point_domain="float": a float zero point and scale fitted by least
    squares. Either is folded into the GEMM's per-group offsets; both closer to float than symmetric."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 64)
    model = Mlp().eval()
    with torch.no_grad():
        for layer in (model.up, model.down):
            layer.weight.abs_()  # all positive: symmetric groups use half their levels
    converted = _int4(model, x, **ZERO_POINTS[domain])
    zps = [getattr(converted, n.args[2].target) for n in converted.graph.nodes if n.target is dq_per_channel]
    assert all(z.min() >= -8 and z.max() <= 7 for z in zps) and any(bool(z.any()) for z in zps)
    fractional = any(bool((z != z.round()).any()) for z in zps)
    assert fractional == (domain == "float"), zps
    with torch.no_grad():
        asymmetric, symmetric = (Agreement().add(model(x), m(x)).sqnr for m in (converted, _int4(model, x)))
    assert asymmetric > symmetric + 1, (asymmetric, symmetric)  # dB
    with _kernels(kernel):
        ref, out, code, stats = compile_and_run(converted, (x,), bf16=bf16)
    assert weight_only_int4_calls(code, kernel) == 2 and not float_compute_calls(code), code
    assert stats["unfused"] == [], stats
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("rows", [1, 6], ids=["decode", "prompt"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_siblings_on_one_input_become_one_call(bf16, rows):
    """Our int4 op keeps a channel's packed weight and group pairs in its own row, so q, k, v (and
    gate, up) merge into one call over the concatenated rows (graph_rewrites.merge_sibling_woq_linears):
    a decode step's 5 weight streams in 2 calls."""
    torch.manual_seed(0)
    x = torch.randn(1, rows, 32)
    ref, out, code, stats = compile_and_run(_int4(Siblings().eval(), x), (x,), bf16=bf16)
    assert weight_only_int4_calls(code, "ours") == 2 and not float_compute_calls(code), code
    assert_siblings_merged(stats, "woq_int4_linear", out, ref, bf16)


def test_torchs_int4_gemm_is_not_merged():
    """Without our kernel layer each sibling keeps torch's op (its packed layout tiles channels)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32)
    with _kernels("torch"):
        ref, out, code, stats = compile_and_run(_int4(Siblings().eval(), x), (x,))
    assert weight_only_int4_calls(code, "torch") == 5, code
    assert not stats["fused"].get("merge.sibling_woq_linears"), stats
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
