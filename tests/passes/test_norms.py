"""A layer norm quantized for the next int8 layer runs as one call of our
`iq_onednn.layer_norm_quant` (passes/norms.py): with the Python and the C++ wrapper, fp32 and bf16
autocast, a dynamic batch, the float output read by a residual (post-norm) or by nothing
(pre-norm), with and without a bias; the output matches what Inductor's own kernels compute within
a quantization step. A layer norm nobody quantizes, a float model, and our kernel layer switched
off keep Inductor's kernels."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run

import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.generated_code import layer_norm_quant_calls
from inductor_quant.kernels.cpu import cpu_info

BF16 = [False, True] if cpu_info().bf16_native else [False]


class Norms(nn.Module):
    """post: y = norm(x + a(x)), y + b(y) (the norm's float output read by the residual);
    pre: c(norm_nb(y)) (read by the quantize alone; a norm without bias); the last norm's output
    is the model's: nothing quantizes it."""

    def __init__(self, hidden=48):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.post, self.pre, self.last = nn.LayerNorm(hidden), nn.LayerNorm(hidden, bias=False), nn.LayerNorm(hidden)

    def forward(self, x):
        y = self.post(x + self.a(x))
        y = y + self.b(y)
        return self.last(y + self.c(self.pre(y)))


def _inputs(batch=2):
    return (torch.randn(batch, 12, 48) * 2,)


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=8)
    return quantize(Norms().eval(), _inputs(), [_inputs() for _ in range(4)], dynamic_shapes=({0: batch},))


@pytest.mark.parametrize("bf16", BF16, ids=lambda b: "bf16" if b else "fp32")
@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_quantized_layer_norms_call_ours_and_match_inductors(converted, own, cpp_wrapper, bf16):
    inputs = _inputs()
    eager, ours, code, stats = compile_and_run(converted, inputs, cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert layer_norm_quant_calls(code) == 2, code  # post and pre; not the last
    assert stats["kernels"]["layer_norm_quant"] == 2
    assert "native_layer_norm" in code  # the last norm: Inductor's kernel
    with iq_passes.own_kernels(False):
        _, theirs, code_torch, _ = compile_and_run(converted, inputs, cpp_wrapper=cpp_wrapper, bf16=bf16)
    assert layer_norm_quant_calls(code_torch) == 0
    # the same steps as Inductor's kernel, summed in another order: a value on a rounding edge may
    # quantize one step apart, which the last norm's output shows as far less than a unit
    assert (ours.float() - theirs.float()).abs().max() < 0.05
    assert (ours.float() - eager.float()).abs().max() < 0.1 + 2 * (theirs.float() - eager.float()).abs().max()


def test_dynamic_batch(converted, own):
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        compiled = torch.compile(converted, dynamic=True)
        for batch in (3, 1, 5):
            inputs = _inputs(batch)
            got, want = compiled(*inputs), converted(*inputs)
            assert got.shape == want.shape and (got - want).abs().max() < 0.1
    assert iq_passes.stats()["kernels"].get("layer_norm_quant", 0) >= 2  # each compile: both norms


def test_a_float_model_keeps_inductors_layer_norm(own):
    model = Norms().eval()
    eager, out, code, stats = compile_and_run(model, _inputs())
    assert layer_norm_quant_calls(code) == 0 and "layer_norm_quant" not in stats["kernels"]
    assert (out - eager).abs().max() < 1e-4
