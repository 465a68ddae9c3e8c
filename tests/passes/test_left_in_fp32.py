"""Nothing quantized stays in fp32 unreported: a cat of any number of quantized branches runs on
int8, and every quantized op left between dequantize and quantize (conv, linear, cat, pool, view,
permute) is in `stats()["unfused"]` with its reason, so `report --strict` can fail on it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compile_utils import compile_and_run, onednn_calls
from graph_utils import stage_graph
from qdq_models import CatDim0, q_dq, X_SCALE, X_ZP

import inductor_quant
import inductor_quant.passes as iq_passes
from inductor_quant.passes import registry
from inductor_quant.testing import assert_fused


class Branches(nn.Module):
    """n conv + relu branches on one input, concatenated, then a conv (an Inception block)."""

    def __init__(self, n: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(n))
        self.out = nn.Conv2d(4 * n, 8, 1)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(c(x)) for c in self.convs], 1))


@pytest.mark.parametrize("n", [2, 4, 6])
def test_cat_of_n_quantized_branches_runs_on_int8(n):
    torch.manual_seed(n)
    x = torch.randn(2, 4, 6, 6)
    converted = inductor_quant.quantize(Branches(n).eval(), (x,), [(torch.randn(2, 4, 6, 6),) for _ in range(3)])
    ref, out, code, stats = compile_and_run(converted, (x,))
    assert stats["fused"].get("int8.cat") == 1 and stats["unfused"] == [], stats
    assert onednn_calls(code, "qconv_pointwise") == n + 1
    scale = max(float(n.args[1]) for n in converted.graph.nodes
                if n.target is torch.ops.quantized_decomposed.quantize_per_tensor.default)
    torch.testing.assert_close(out, ref, atol=scale * 1.01, rtol=0)


def test_cat_along_dim0_runs_on_int8():
    """A cat along dim 0 exports without its dim argument: a form of its own."""
    inputs = tuple(torch.randn(2, 4) for _ in range(3))
    gm, flat = stage_graph(CatDim0(), inputs)
    iq_passes.reset_stats()
    registry.run(gm.graph)
    gm.recompile()
    assert iq_passes.stats()["fused"].get("int8.cat.dim0") == 1, iq_passes.stats()
    cat = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.cat.default)
    assert all(i.meta["val"].dtype == torch.uint8 for i in cat.args[0]) and len(cat.args) == 1, gm.code
    torch.testing.assert_close(gm(*flat), CatDim0()(*inputs))


class MixedQparams(nn.Module):
    """Quantized ops whose input and output qparams differ: no int8 form runs them exactly."""

    def forward(self, a, b):
        cat = q_dq(torch.cat([q_dq(a, X_SCALE, X_ZP), q_dq(b, 0.05, 10)], 1), X_SCALE, X_ZP)
        pool = q_dq(F.max_pool2d(q_dq(a, X_SCALE, X_ZP), 2), 0.05, 10)
        perm = q_dq(q_dq(b, X_SCALE, X_ZP).permute(0, 2, 3, 1), 0.05, 10)
        avg = q_dq(F.avg_pool2d(q_dq(a, X_SCALE, X_ZP), 2), X_SCALE, X_ZP)
        gap = q_dq(F.adaptive_avg_pool2d(q_dq(b, X_SCALE, X_ZP), 1), X_SCALE, X_ZP)  # mean, then a view
        return cat, pool, perm, avg, gap


INPUTS = (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))


def test_quantized_ops_left_in_fp32_are_reported_with_a_code():
    gm, _ = stage_graph(MixedQparams(), INPUTS)
    iq_passes.reset_stats()
    registry.run(gm.graph)
    got = sorted((u.op, u.code) for u in iq_passes.stats()["unfused"])
    assert got == [("cat", "propagate_qparams"), ("permute", "propagate_qparams"), ("pool", "avg_pool"),
                   ("pool", "avg_pool"), ("pool", "propagate_qparams")], iq_passes.stats()
    assert all(u.reason for u in iq_passes.stats()["unfused"])


def test_strict_check_fails_on_a_quantized_op_left_in_fp32_but_not_on_avg_pool():
    converted = torch.export.export(MixedQparams(), INPUTS).module()
    with pytest.raises(AssertionError, match=r"\(cat\).*inputs and output quantized differently"):
        assert_fused(None, INPUTS, converted=converted)

    class AvgOnly(nn.Module):
        def forward(self, a, b):
            return q_dq(F.avg_pool2d(q_dq(a, X_SCALE, X_ZP), 2), X_SCALE, X_ZP) + b[:, :, :3, :3]

    report = assert_fused(None, INPUTS, converted=torch.export.export(AvgOnly(), INPUTS).module())
    assert [u[3] for u in report.unfused] == ["avg_pool"]  # listed, by design: not a failure
