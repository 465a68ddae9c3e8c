"""Under `template_options()` (`fast_options()` on AMX: max-autotune with Inductor's C++ GEMM template), a bmm of two values the
graph computes, with a dynamic batch, is lowered to ATen's bmm alone while our passes are installed
(passes/lowerings.py): timing the template overwrote the second operand's symbolic sizes, and when
ATen's bmm won, the C++ wrapper called it at the example batch (a crash at any other batch; the
attention sweep's finding, timing-dependent). The decision itself is asserted on the lowering
(it must not depend on timing); the compile test shows such a bmm runs ATen's at three batch sizes
(it passes without the change too whenever the template is not a choice or ATen's timing keeps
the symbolic sizes, so it is not the proof)."""

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

import inductor_quant.passes as iq_passes
from inductor_quant.compile_options import GEMM_TEMPLATE_ISA, template_options
from inductor_quant.kernels.cpu import cpu_info

pytestmark = pytest.mark.skipif(not any(f in cpu_info().features for f in GEMM_TEMPLATE_ISA),
                                reason="the GEMM template has int8 micro-kernels only on AVX-512 VNNI / AMX CPUs")


class Scores(nn.Module):
    """Q·Kᵀ of two computed values (as attention left unfused has it), then a softmax."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return (self.q(x).relu() @ self.k(x).sigmoid().transpose(1, 2)).softmax(-1)


def test_a_dynamic_batch_bmm_runs_atens_bmm_at_every_batch():
    torch.manual_seed(0)
    model = Scores().eval()
    torch._dynamo.reset()
    assert iq_passes.is_installed()
    # no autotune cache: a cached verdict skips the timing, and with it the bug
    compiled = torch.compile(model, dynamic=True, options={**template_options(), "autotune_local_cache": False})
    with torch.no_grad():
        for batch in (3, 1, 5):
            x = torch.randn(batch, 24, 16)
            out, codes = run_and_get_code(compiled, x)
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    code = "\n".join(codes)
    assert "aoti_torch_cpu_bmm_out(" in code and "CppBmmTemplate" not in code, code


class _Box:
    def __init__(self, size):
        self.size = size

    def get_size(self):
        return self.size


def test_only_a_bmm_with_a_symbolic_second_operand_keeps_off_the_template():
    import sympy
    from torch._inductor import config

    from inductor_quant.passes import lowerings

    seen = []
    lower = lowerings._aten_if_dynamic(lambda a, b: seen.append(config.max_autotune_gemm_backends))
    with config.patch(max_autotune_gemm_backends="CPP,ATEN"):
        lower(None, _Box([2 * sympy.Symbol("s0"), 4, 4]))
        lower(None, _Box([6, 4, 4]))
    with config.patch(max_autotune_gemm_backends="ATEN"):
        lower(None, _Box([2 * sympy.Symbol("s0"), 4, 4]))
    assert seen == ["ATEN", "CPP,ATEN", "ATEN"]
