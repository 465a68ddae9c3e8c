"""Attention in a compile our passes fused int8 layers in runs our `iq_onednn.attention`
(passes/attention.py): the generated code calls it instead of torch's CPU flash attention, with
the Python and the C++ wrapper, fp32 and bf16 autocast (where bf16 is native), dynamic batch, an
additive mask; the output matches the eager converted model as torch's flash attention does.
The quantize of the output projection's input runs after the heads' permute + reshape, on one
flat tensor. A float model, our kernel layer switched off, and an AOTInductor build keep torch's
attention."""

import math

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run

import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.generated_code import attention_calls
from inductor_quant.passes.attention import FLASH, why_not
from inductor_quant.kernels.cpu import cpu_info

BF16 = [False, True] if cpu_info().bf16_native else [False]


class Layer(nn.Module):
    """A post-norm encoder layer: Q/K/V (merged into one GEMM), matmul -> softmax -> matmul, out
    projection with a residual, layer norm; `masked`: a key-padding mask added to the scores."""

    def __init__(self, hidden=32, heads=4, masked=False):
        super().__init__()
        self.heads, self.masked = heads, masked
        self.q, self.k, self.v, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x, mask=None):
        b, s, h = x.shape
        split = lambda t: t.view(b, s, self.heads, h // self.heads).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads)
        if self.masked:
            scores = scores + mask
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, s, h)
        return self.norm(x + self.out(ctx))


def _inputs(masked, batch=2, seq=12):
    x = torch.randn(batch, seq, 32)
    if not masked:
        return (x,)
    mask = torch.zeros(batch, 1, 1, seq)
    mask[0, ..., -3:] = -1e4  # the first sequence's last 3 positions are padding
    return x, mask


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "masked"])
def layer(request):
    torch.manual_seed(0)
    masked = request.param
    calib = [_inputs(masked) for _ in range(4)]
    batch = torch.export.Dim("batch", min=1, max=8)
    dynamic = ({0: batch},) + (({0: batch},) if masked else ())
    return quantize(Layer(masked=masked).eval(), _inputs(masked), calib, dynamic_shapes=dynamic), masked


@pytest.mark.parametrize("bf16", BF16, ids=lambda b: "bf16" if b else "fp32")
@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_attention_calls_ours_and_matches_eager_as_torchs_does(layer, own, cpp_wrapper, bf16):
    converted, masked = layer
    inputs = _inputs(masked)
    eager, ours, code, stats = compile_and_run(converted, inputs, cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert attention_calls(code) == {"ours": 1}, code
    assert stats["kernels"]["attention"] == 1
    # the output projection's quantize moved back after the heads' permute + reshape
    # (torch's quant_lift_up put it on the attention's [B, H, S, D] view)
    assert stats["fused"].get("attention.quantize_after_reshapes") == 1, stats
    with iq_passes.own_kernels(False):
        _, theirs, code_torch, _ = compile_and_run(converted, inputs, cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert attention_calls(code_torch) == {"torch": 1}
    ours_err = (ours.float() - eager.float()).abs().max().item()
    theirs_err = (theirs.float() - eager.float()).abs().max().item()
    # fp32: float rounding apart; bf16: our scores and softmax stay fp32 where the eager model
    # rounds them to bf16, so allow what torch's own attention is off by, and a bf16 step
    assert ours_err <= (1e-4 if not bf16 else max(2 * theirs_err, 0.05)), (ours_err, theirs_err)


def test_dynamic_batch_one_and_more(layer, own):
    converted, masked = layer
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        compiled = torch.compile(converted, dynamic=True)
        for batch in (3, 1, 5):
            inputs = _inputs(masked, batch=batch)
            got, want = compiled(*inputs), converted(*inputs)
            assert got.shape == want.shape and (got - want).abs().max() < 1e-4
    assert iq_passes.stats()["kernels"].get("attention", 0) >= 1


def test_a_float_model_keeps_torchs_attention(own):
    """Only compiles our passes fused int8 layers in are touched."""
    model = Layer().eval()
    eager, out, code, stats = compile_and_run(model, _inputs(False))
    assert attention_calls(code) == {"torch": 1} and "attention" not in stats["kernels"]
    assert (out - eager).abs().max() < 1e-4


def test_aot_inductor_keeps_torchs_attention(layer, own, tmp_path):
    """A package must load in a process that never built our library (as for the layers)."""
    converted, masked = layer
    if masked:
        pytest.skip("one AOTInductor build proves it")
    x = _inputs(False)
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        path = torch._inductor.aoti_compile_and_package(torch.export.export(converted, x),
                                                        package_path=str(tmp_path / "m.pt2"))
        got, want = torch._inductor.aoti_load_package(path)(*x), converted(*x)
    assert "attention" not in iq_passes.stats()["kernels"]
    assert (got - want).abs().max() < 1e-4


def _flash_node(q_shape=(1, 2, 8, 4), dtype=torch.float32, mask=None, **kwargs):
    """The flash-attention node of a traced call (fake values in meta, as Inductor's graph has)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def call(q, k, v, *m):
        extra = {"attn_mask": m[0]} if m else {}
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, **kwargs, **extra)[0]

    args = [torch.randn(q_shape, dtype=dtype) for _ in range(3)] + ([mask] if mask is not None else [])
    graph = make_fx(call, tracing_mode="fake")(*args).graph
    graph.eliminate_dead_code()  # the unread logsumexp, as in the graph Inductor hands our pass
    return next(iter(graph.find_nodes(op="call_function", target=FLASH)))


@pytest.mark.parametrize("kwargs, mask, why", [
    ({}, None, None),
    ({}, torch.zeros(1, 1, 1, 8), None),
    ({"is_causal": True}, None, "ATTN_DROPOUT_OR_CAUSAL"),
    ({"dropout_p": 0.1}, None, "ATTN_DROPOUT_OR_CAUSAL"),
    ({}, torch.ones(1, 1, 8, 8, dtype=torch.bool), "ATTN_MASK"),
], ids=["plain", "additive-mask", "causal", "dropout", "boolean-mask"])
def test_what_stays_torchs_attention_has_a_code(own, kwargs, mask, why):
    reason = why_not(_flash_node(mask=mask, **kwargs))
    assert (reason and reason.why.name) == why, reason
