"""Compile a model under freezing + no_grad and read what runs: generated code, stats, outputs."""

from __future__ import annotations

import re

import torch
from torch._inductor.utils import run_and_get_code

import inductor_quant.passes as iq_passes

# fp32 conv / GEMM calls that must not remain for a quantized layer (python and C++ wrappers)
FP32_COMPUTE = re.compile(
    r"extern_kernels\.(convolution|mm|addmm|bmm)\(|aten\.convolution|_convolution_pointwise|"
    r"_linear_pointwise|mkl_linear|aoti_torch_cpu_(convolution|mm_out|addmm_out|bmm_out)|"
    r"aoti_torch__?(convolution|mm_out|addmm_out|bmm_out)"
)
PREPACK_AT_RUNTIME = re.compile(r"q(conv|linear)_prepack")


def onednn_calls(code: str, op: str) -> int:
    """Calls of onednn.<op> in generated code (python: torch.ops.onednn.op.overload(...);
    C++: aoti_torch_cpu_<op>... or the boxed-dispatch fallback naming the op)."""
    py = len(re.findall(rf"torch\.ops\.onednn\.{op}\.\w+\(", code))
    cpp = len(re.findall(rf"aoti_torch_cpu__?{op}\w*\(", code))
    return py + cpp


def compile_and_run(model, inputs, cpp_wrapper=False, bf16=False):
    torch._dynamo.reset()
    iq_passes.reset_stats()
    snapshot = [t.clone() for t in inputs]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), torch._inductor.config.patch(cpp_wrapper=cpp_wrapper):
        with autocast:
            ref = model(*inputs)
            out, codes = run_and_get_code(torch.compile(model), *inputs)
    for before, after in zip(snapshot, inputs):
        assert torch.equal(before, after), "compiled model mutated its input"
    return ref, out, "\n".join(codes), iq_passes.stats()
