"""Group-wise weight-only int8 linears (`get_x86_inductor_linear_weight_only_int8_config(group_size)`):
convert keeps the int8 values in a constant seen as [out * in / group, group], one symmetric scale
per group, and leaves dequantize_per_channel -> reshape [out, in] -> linear(float x) -- the int4
form with values beyond [-8, 7]. The compile runs each as our `iq_onednn.woq_linear` with scales
[out, in / group] (one row: our GEMV scales each group's sum; more rows: the float GEMM on the
dequantized weight), fp32 or bf16 under autocast, Python or C++ wrapper; without our kernel layer
the float linear on the dequantized weight runs and `stats()["unfused"]` says why. Builtins off
(tests/conftest.py)."""

import copy

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run
from test_weight_only_int8 import Siblings, assert_float_without_our_kernel_layer, assert_siblings_merged

from inductor_quant import quantize
from inductor_quant.generated_code import float_compute_calls, weight_only_int4_calls, weight_only_int8_calls
from inductor_quant.numerics import Agreement
from inductor_quant.quantizer import X86InductorQuantizer, get_x86_inductor_linear_weight_only_int8_config

dq_per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default


class Mlp(nn.Module):
    """up (bias) -> relu -> down (no bias); in_features 64 and 96: two and three groups of 32."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(64, 96), nn.Linear(96, 16, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _quantize(model, x, group=32):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_x86_inductor_linear_weight_only_int8_config(group_size=group))
    return quantize(model.eval(), (x,), [(x,)], quantizer=quantizer)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = Mlp().eval()
    with torch.no_grad():  # a large weight in every channel: groups keep the rest of its grid fine
        model.up.weight[:, 5] = 4.0
    x = torch.randn(1, 64)
    return model, _quantize(model, x), x


def test_convert_keeps_int8_groups_with_one_scale_each(mlp):
    model, converted, x = mlp
    dqs = [n for n in converted.graph.nodes if n.target is dq_per_channel]
    assert [tuple(n.args[4:7]) for n in dqs] == [(-127, 127, torch.int8)] * 2
    consts = [getattr(converted, n.args[0].target) for n in dqs]
    assert [tuple(c.shape) for c in consts] == [(96 * 64 // 32, 32), (16 * 96 // 32, 32)]
    assert all(torch.equal(getattr(converted, n.args[2].target), torch.zeros(len(c), dtype=torch.int64))
               for n, c in zip(dqs, consts))  # symmetric
    assert [list(next(iter(n.users)).args[1]) for n in dqs] == [[96, 64], [16, 96]]
    per_channel = quantize(model, (x,), [(x,)], quantizer=X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_x86_inductor_linear_weight_only_int8_config()))
    xs = torch.randn(64, 1, 64)  # rows of the exported shape
    with torch.no_grad():
        ref = torch.cat([model(r) for r in xs])
        grouped_db = Agreement().add(ref, torch.cat([converted(r) for r in xs])).sqnr
        channel_db = Agreement().add(ref, torch.cat([per_channel(r) for r in xs])).sqnr
    assert grouped_db > channel_db + 2, (grouped_db, channel_db)  # the outlier coarsens one group, not its row


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 5], ids=["decode", "prefill"])
def test_the_compile_calls_our_weight_only_kernel_with_group_scales(mlp, rows, bf16, cpp_wrapper):
    model = mlp[0]
    x = torch.randn(1, rows, 64)
    converted = _quantize(model, x)
    ref, out, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert weight_only_int8_calls(code) == 2 and not weight_only_int4_calls(code), code
    assert not float_compute_calls(code), code  # the weight stays int8: no float linear on it
    assert stats["unfused"] == [] and stats["kernels"] == {"woq_linear": 2}, stats
    assert sum(v for k, v in stats["fused"].items() if k.startswith("linear.woq_grouped_int8")) == 2, stats
    # one row: each group's fp32 sum times its scale (the eager model scales each weight);
    # more rows: the same dequantized weight as eager's, the same float linear
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_group_scales_reach_the_kernel_as_fp16_where_every_scale_is_an_fp16_value(mlp, monkeypatch):
    """Our quantizer rounds group scales up to fp16 values (llm_observers.fp16_up); the passes
    hand such scales to the kernel as fp16 (half the scale bytes; widened exactly: the kernel
    tests), and keep fp32 where one scale is not an fp16 value (a model quantized elsewhere)."""
    from inductor_quant.kernels import native
    from inductor_quant.passes.match import val

    model, converted, x = mlp
    scales = [getattr(converted, n.args[1].target) for n in converted.graph.nodes if n.target is dq_per_channel]
    assert all(torch.equal(s.half().float(), s) for s in scales)
    seen, lower = [], native.woq_linear
    monkeypatch.setattr(native, "woq_linear", lambda c, x, w, scale, *rest: (seen.append(val(scale).dtype),
                                                                             lower(c, x, w, scale, *rest))[1])
    ref, out, _, _ = compile_and_run(converted, (x,))
    assert seen == [torch.float16] * 2, seen
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    converted = copy.deepcopy(converted)
    first = next(n.args[1].target for n in converted.graph.nodes if n.target is dq_per_channel)
    getattr(converted, first)[0] *= 1 + 2 ** -20  # no longer an fp16 value
    seen.clear()
    ref, out, _, _ = compile_and_run(converted, (x,))
    assert sorted(seen, key=str) == [torch.float16, torch.float32], seen
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("rows", [1, 6], ids=["decode", "prefill"])
def test_group_wise_siblings_on_one_input_become_one_call(rows):
    torch.manual_seed(0)
    x = torch.randn(1, rows, 32)
    ref, out, code, stats = compile_and_run(_quantize(Siblings(), x), (x,))
    assert weight_only_int8_calls(code) == 2, code  # q, k, v in one; gate, up in another
    assert_siblings_merged(stats, "woq_linear", out, ref, False)


def test_siblings_with_per_channel_and_group_scales_stay_apart():
    """Scales [out] and [out, in / group] do not concatenate: such siblings keep their own calls."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32)
    quantizer = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_x86_inductor_linear_weight_only_int8_config(group_size=32))
    quantizer.set_module_name_qconfig("k", get_x86_inductor_linear_weight_only_int8_config())
    quantizer.set_module_name_qconfig("up", get_x86_inductor_linear_weight_only_int8_config())
    converted = quantize(Siblings().eval(), (x,), [(x,)], quantizer=quantizer)
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert weight_only_int8_calls(code) == 4, code  # q + v merged, k alone; gate and up alone
    assert stats["fused"].get("merge.sibling_woq_linears") == 1, stats
    assert stats["kernels"] == {"woq_linear": 5} and stats["unfused"] == [], stats
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_without_our_kernel_layer_the_float_linear_runs_and_is_reported(mlp):
    assert_float_without_our_kernel_layer(*mlp[1:], linears=2)


@pytest.mark.parametrize("group", [0, 16, 48, 2.0])
def test_a_group_size_the_kernel_does_not_take_is_a_clear_error(group):
    with pytest.raises(ValueError, match="multiple of 32"):
        get_x86_inductor_linear_weight_only_int8_config(group_size=group)


def test_the_config_is_one_object_per_group_size():
    make = get_x86_inductor_linear_weight_only_int8_config
    assert make(group_size=64) is make(64) and make() is make(None) and make(64) is not make()
