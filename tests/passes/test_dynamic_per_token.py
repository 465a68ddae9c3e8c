"""Per-token dynamic int8 linears (`get_x86_inductor_linear_dynamic_per_token_config`): convert
leaves choose_qparams_per_token -> quantize_per_token -> dequantize_per_token on each linear's
input. The compile runs oneDNN's int8 linear on the int8 rows (scale 1: exact int32 sums), each
row times its scale, then the bias; the per-token ops become ATen ops Inductor fuses (no Python op
calls left), Python or C++ wrapper, fp32 or bf16 under autocast, static or dynamic batch. Builtins
off (tests/conftest.py)."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run, compile_once_and_run
from test_weight_only_int4 import Mlp  # 64 -> 32 (bias) -> relu -> 16 (no bias)

from inductor_quant import quantize
from inductor_quant.generated_code import float_compute_calls, onednn_int8_calls
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.numerics import Agreement
from inductor_quant.quantizer import X86InductorQuantizer, get_x86_inductor_linear_dynamic_per_token_config

qd = torch.ops.quantized_decomposed
BF16 = [False, True] if cpu_info().bf16_native else [False]


def _tokens(batch=2, seq=5):
    """Rows of very different magnitudes: what a per-token scale is for."""
    return torch.randn(batch, seq, 64) * torch.linspace(0.05, 4, seq)[None, :, None]


def _per_token(model, x, dynamic_shapes=None):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(nn.Linear,
                                                               get_x86_inductor_linear_dynamic_per_token_config())
    return quantize(model, (x,), [(x,)], quantizer=quantizer, dynamic_shapes=dynamic_shapes)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    x = _tokens()
    model = Mlp().eval()
    return model, _per_token(model, x), x


def test_convert_quantizes_each_token_at_run_time(mlp):
    model, converted, x = mlp
    targets = [n.target for n in converted.graph.nodes if n.op == "call_function"]
    assert targets.count(qd.choose_qparams_per_token.default) == 2
    assert targets.count(qd.dequantize_per_token.default) == 2 and qd.quantize_per_tensor.default not in targets
    with torch.no_grad():
        per_token = Agreement().add(model(x), converted(x)).sqnr
    assert per_token > 30, per_token  # dB; each row quantized with its own scale


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
@pytest.mark.parametrize("bf16", BF16, ids=lambda b: "bf16" if b else "fp32")
def test_the_compile_runs_int8_linears_with_row_scales(mlp, bf16, cpp_wrapper):
    _, converted, x = mlp
    ref, out, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert sum(onednn_int8_calls(code).values()) == 2, code  # torch's or our kernel layer's int8 linear
    assert not float_compute_calls(code) and "per_token" not in code, code  # no Python op calls
    assert stats["unfused"] == [], stats
    assert sum(v for k, v in stats["fused"].items() if k.startswith("qlinear.per_token")) == 2, stats
    # fp32: the same int8 products, summed exactly, scaled in another order; bf16: the eager model
    # rounds the dequantized activations and weights to bf16, the compiled one only its result
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_dynamic_batch():
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=16)
    converted = _per_token(Mlp().eval(), _tokens(3), dynamic_shapes=({0: batch},))
    pairs, code, stats = compile_once_and_run(converted, [(_tokens(b),) for b in (3, 1, 5)])
    assert stats["unfused"] == [] and "per_token" not in code, stats
    for ref, out in pairs:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_without_freezing_the_per_token_ops_run_as_aten_ops(mlp):
    """Unfused (freezing off) the per-token ops still compile: as ATen ops, not as fallbacks whose
    fake kernel (float64 scales for float32 ones) torch 2.14 rejects at run time."""
    _, converted, x = mlp
    # no caches: a graph served from the FX or AOTAutograd cache skips the joint passes (an earlier
    # run of the same source stored this one), and the stats would be empty
    with torch._inductor.config.patch(freezing=False, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        ref, out, code, stats = compile_and_run(converted, (x,))
    assert "per_token" not in code and [u.code for u in stats["unfused"]] == ["freezing_off"] * 2, code
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
