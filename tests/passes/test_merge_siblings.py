"""Sibling int8 linears on one input (a transformer's Q, K, V) run as one GEMM: one oneDNN call
over the concatenated weights, each former output a slice of it, same numbers as the eager
converted model."""

import pytest
import torch
from torch import nn

from inductor_quant import quantize
from inductor_quant.generated_code import count, float_compute_calls, prepacks_at_runtime

from compile_utils import compile_and_run


class Projections(nn.Module):
    """q, k, v of one input; `act` puts a post-op on v only (then v cannot join q and k)."""

    def __init__(self, act: bool = False, bias: bool = True):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(32, n, bias=bias) for n in (32, 32, 48))
        self.act = act

    def forward(self, x):
        v = self.v(x)
        v = torch.relu(v) if self.act else v
        return torch.cat([self.q(x) * self.k(x), v], dim=-1)


def _run(model, bf16=False):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    converted = quantize(model.eval(), (x,), [(x,)])
    return compile_and_run(converted, (x,), bf16=bf16)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_q_k_v_become_one_gemm(bias, bf16):
    ref, out, code, stats = _run(Projections(bias=bias), bf16)
    assert stats["fused"].get("merge.sibling_linears") == 1, stats
    assert count(code, "qlinear_pointwise") == 1 and not float_compute_calls(code), code
    assert not prepacks_at_runtime(code), code  # the concatenated weight folded at freezing
    atol, rtol = (3e-2, 2e-2) if bf16 else (2e-3, 1e-3)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_siblings_with_different_post_ops_stay_apart():
    ref, out, code, stats = _run(Projections(act=True))
    assert stats["fused"].get("merge.sibling_linears") == 1  # q and k only
    assert count(code, "qlinear_pointwise") == 2, code
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=1e-3)
