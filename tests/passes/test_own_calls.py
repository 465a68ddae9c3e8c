"""Own kernel calls on (`passes.set_own_kernels(True)`): every fused 2-D int8 conv calls
`iq_onednn.qconv2d` in the generated code, the residual conv `iq_onednn.qconv2d_sum_` (in place),
linears `iq_onednn.qlinear`, residual ones `iq_onednn.qlinear_sum_` (in place) or `qlinear_add`,
with the Python and the C++ wrapper, static and dynamic batch; an AOTInductor compile keeps
torch's ops; the output is the same as with torch's ops. Builtins off (tests/conftest.py)."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run

import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.generated_code import int8_gemm_template_calls, onednn_int8_calls, own_kernel_calls
from inductor_quant.passes.own_calls import TEMPLATE_FROM_ROWS
from inductor_quant.quantizer.x86_inductor_quantizer import (X86InductorQuantizer,
                                                             get_default_x86_inductor_quantization_config)


class Block(nn.Module):
    """A stem conv (fp32 input, hardtanh), a 1x1 conv with relu to uint8, a grouped 3x3 with a
    residual add (the sum conv) and a strided conv to a float output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pw = nn.Conv2d(16, 16, 1)
        self.gc = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.down = nn.Conv2d(16, 8, 3, stride=2, bias=False)

    def forward(self, x):
        y = nn.functional.hardtanh(self.stem(x), 0.0, 6.0)
        z = torch.relu(self.pw(y))
        return self.down(torch.relu(self.gc(z) + y))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    calib = [(torch.randn(2, 3, 12, 12),) for _ in range(4)]
    dynamic = ({0: torch.export.Dim("batch", min=1, max=16)},)
    return quantize(Block().eval(), (x,), calib, quantizer=quantizer, dynamic_shapes=dynamic), x


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_plain_convs_call_our_kernels_and_compute_the_same(block, own, cpp_wrapper):
    converted, x = block
    _, ours, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
    assert own_kernel_calls(code) == 4, code  # stem, pw, down; gc with its residual sum in place
    assert onednn_int8_calls(code) == {"qconv_pointwise": 3, "qconv2d_pointwise": 1}
    assert stats["kernels"] == {"qconv2d": 3, "qconv2d_sum_": 1}
    assert "ops.onednn.qconv" not in code and "aoti_torch_cpu__qconv" not in code  # none of torch's left
    assert "qconv_prepack" not in code  # our layer packs its weights itself, once
    with iq_passes.own_kernels(False):
        _, theirs, code_torch, _ = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
    assert own_kernel_calls(code_torch) == 0
    assert torch.equal(ours, theirs)


def test_dynamic_batch_one_and_more(block, own):
    converted, x = block
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(converted, dynamic=True)
        for batch in (3, 1, 5):
            xb = torch.randn(batch, 3, 12, 12)
            with iq_passes.own_kernels(False):
                want = converted(xb)
            got = compiled(xb)
            step = 0.05  # far above any one-step difference of these outputs (|y| ~ 1)
            assert got.shape == want.shape and (got - want).abs().max() < step
    assert iq_passes.stats()["kernels"].get("qconv2d", 0) >= 3


def test_aot_inductor_keeps_torch_ops(block, own, tmp_path):
    """A package must load in a process that never built our library: AOTI compiles keep torch's ops."""
    converted, x = block
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        ep = torch.export.export(converted, (x,))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
        loaded = torch._inductor.aoti_load_package(path)
        got, want = loaded(x), converted(x)
    assert not iq_passes.stats()["kernels"]
    assert (got - want).abs().max() < 0.05


class Mlp(nn.Module):
    """Linears on a 3-D input: gelu to uint8, then one to float with the model's input added
    (an input may not be overwritten: `add`, a new output)."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x))) + x


def test_linears_call_our_kernels_and_compute_the_same(own):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    converted = quantize(Mlp().eval(), (x,), [(torch.randn(2, 5, 16),) for _ in range(4)], quantizer=quantizer)
    for cpp_wrapper in (False, True):
        _, ours, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
        assert stats["kernels"] == {"qlinear": 1, "qlinear_add": 1}, stats
        assert own_kernel_calls(code) == 2 and "qlinear_pointwise" not in code.replace("iq_onednn", ""), code
        with iq_passes.own_kernels(False):
            _, theirs, _, _ = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
        assert torch.equal(ours, theirs)


class ResidualMlp(nn.Module):
    """A residual computed in the graph (`h`, read by `up` first): the sum linear writes over it."""

    def __init__(self, requantized: bool):
        super().__init__()
        self.requantized = requantized
        self.inp, self.up, self.down, self.head = nn.Linear(16, 16), nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = self.inp(x)
        y = self.down(nn.functional.gelu(self.up(h))) + h
        return self.head(y) if self.requantized else y  # head: y is requantized to uint8 for it


@pytest.mark.parametrize("requantized", [False, True], ids=["float-out", "uint8-out"])
def test_residual_linear_sums_in_place_through_our_kernel(own, requantized):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    converted = quantize(ResidualMlp(requantized).eval(), (x,), [(torch.randn(2, 5, 16),) for _ in range(4)])
    for cpp_wrapper in (False, True):
        _, ours, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
        assert stats["kernels"] == {"qlinear": 2 + requantized, "qlinear_sum_": 1}, stats
        assert own_kernel_calls(code) == 3 + requantized and "ops.onednn.qlinear" not in code, code
        assert "qlinear_pointwise" not in code.replace("iq_onednn", "")  # none of torch's left (C++ shims too)
        with iq_passes.own_kernels(False):
            _, theirs, code_torch, _ = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
        assert own_kernel_calls(code_torch) == 0
        assert torch.equal(ours, theirs)


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize("rows", [16, TEMPLATE_FROM_ROWS])
def test_under_max_autotune_few_rows_call_our_kernel_and_many_are_autotuned(own, rows):
    """template_options() (fast_options() on AMX) autotunes linears between Inductor's GEMM template and torch's op; with
    fewer rows than TEMPLATE_FROM_ROWS ours is faster than both, so those linears skip the autotune."""
    torch.manual_seed(0)
    x = torch.randn(2, rows // 2, 32)
    converted = quantize(TwoLinears().eval(), (x,), [(x,)])
    with torch._inductor.config.patch(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"):
        ref, out, code, stats = compile_and_run(converted, (x,))
    assert own_kernel_calls(code) == (2 if rows < TEMPLATE_FROM_ROWS else 0), code
    assert stats["unfused"] == [] and sum(onednn_int8_calls(code).values()) + int8_gemm_template_calls(code) == 2, code
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


CACHED_RUN = """
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.generated_code import own_kernel_calls

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
x = torch.randn(1, 3, 10, 10)
converted = quantize(model, (x,), [(x,)])
with torch.no_grad(), torch._inductor.config.patch(freezing=True):
    out, codes = run_and_get_code(torch.compile(converted), x)
    err = float((out - converted(x)).abs().max())
print(counters["inductor"]["fxgraph_cache_hit"], own_kernel_calls("\\n".join(codes)), err < 0.05)
"""


def test_a_cached_compile_in_a_fresh_process_finds_our_kernels(tmp_path):
    """A compile served from Inductor's FX graph cache runs code that calls our ops without our
    pass running: the cache key already loads the library, so a fresh process runs it."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
    runs = [subprocess.run([sys.executable, "-P", "-c", CACHED_RUN], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == "0" and runs[1][0] == "1", runs  # the second process hit the cache
    for hit, calls, close in runs:
        assert int(calls) == 2 and close == "True", runs
