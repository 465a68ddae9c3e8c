"""What Inductor's generated code calls: the one detector behind `report --strict`,
`inductor_quant.testing` and every test suite.

Python-wrapper code calls ops as `torch.ops.<ns>.<op>.<overload>(...)` or
`extern_kernels.<op>(...)`; C++-wrapper code (and AOTInductor) as `aoti_torch_cpu_<op>...(` shims,
`aoti_torch__<op>...(` for some ATen fallbacks, or the boxed dispatcher naming the op.
"""

from __future__ import annotations

import collections
import re

# oneDNN int8 conv/linear (not their prepack, which must have been folded at freezing): torch's
# ops, or our own calls of the same kernels (kernels/native.py), counted under torch's op name
_ONEDNN_INT8 = re.compile(
    r"torch\.ops\.onednn\.(q(?:conv|linear)\w*?_pointwise)\.\w+\("
    r"|aoti_torch_cpu__?(q(?:conv|linear)\w*?_pointwise)\w*\("
    r"|aoti_torch_call_dispatcher\(\s*\"onednn::(q(?:conv|linear)\w*?_pointwise)\""
    r"|torch\.ops\.iq_onednn\.(qconv2d(?:_sum_)?|qlinear(?:_sum_|_add)?)\.\w+\("
    r"|\"iq_onednn::(qconv2d(?:_sum_)?|qlinear(?:_sum_|_add)?)\""
)
_OWN_AS = {"qconv2d": "qconv_pointwise", "qconv2d_sum_": "qconv2d_pointwise", "qlinear": "qlinear_pointwise",
           "qlinear_sum_": "qlinear_pointwise", "qlinear_add": "qlinear_pointwise"}
# fp32/bf16 convolution and GEMM: float layers, or quantized ones that did not fuse
_FLOAT_COMPUTE = re.compile(
    r"extern_kernels\.(convolution|mm|addmm|bmm)\b"
    r"|aten\.(convolution)\b"
    r"|(_convolution_pointwise|_linear_pointwise|mkl_linear)"
    r"|aoti_torch_(?:cpu_)?_?(convolution|mm_out|addmm_out|bmm_out)\w*\("
)
_PREPACK = re.compile(r"q(?:conv|linear)_prepack|linear_prepack_fp16|_convert_weight_to_int4pack")
# oneDNN fp32 x fp16-weight linear (get_x86_inductor_linear_dynamic_fp16_config)
_ONEDNN_FP16 = re.compile(
    r"torch\.ops\.onednn\.(linear\w*?_dynamic_fp16)\.\w+\("
    r"|aoti_torch_cpu_(linear\w*?_dynamic_fp16)\w*\("
    r"|aoti_torch_call_dispatcher\(\s*\"onednn::(linear\w*?_dynamic_fp16)\""
)
# a kernel Inductor generated: Python wrapper `name = async_compile...`, C++ wrapper `void name(`
_KERNEL_NAME = re.compile(r"^(cpp_fused\w*) = async_compile|^(?:extern \"C\"\s+)?void (cpp_fused\w*)\(", re.M)
# Inductor's C++ GEMM template with an int8 micro-kernel: AMX / AVX-512 VNNI u8 x s8 dot products
_INT8_MICRO_GEMM = re.compile(r"_tile_dpbusd|_mm512_dpbusd_epi32")


def onednn_int8_calls(code: str) -> collections.Counter:
    """{"qconv_pointwise": n, "qconv2d_pointwise": m, "qlinear_pointwise": k} called in `code`."""
    names = (next(g for g in m.groups() if g) for m in _ONEDNN_INT8.finditer(code))
    return collections.Counter(_OWN_AS.get(n, n) for n in names)


def own_kernel_calls(code: str) -> int:
    """Calls of our own kernel layer (`iq_onednn.*`, kernels/native.py) in `code`."""
    return sum(1 for m in _ONEDNN_INT8.finditer(code) if m.group(4) or m.group(5))


def count(code: str, op: str) -> int:
    """Calls of one oneDNN int8 op ("qconv_pointwise", "qconv2d_pointwise", "qlinear_pointwise")."""
    return onednn_int8_calls(code)[op]


def onednn_fp16_calls(code: str) -> collections.Counter:
    """{"linear_dynamic_fp16": n, "linear_relu_dynamic_fp16": m} called in `code`."""
    return collections.Counter(next(g for g in m.groups() if g) for m in _ONEDNN_FP16.finditer(code))


_WEIGHT_ONLY_INT8 = re.compile(r"extern_kernels\._weight_int8pack_mm\(|aoti_torch_cpu__weight_int8pack_mm\("
                               r"|torch\.ops\.iq_onednn\.woq_linear\.\w+\(|\"iq_onednn::woq_linear\"")


def weight_only_int8_calls(code: str) -> int:
    """Calls of a weight-only int8 linear: ours (`iq_onednn.woq_linear`, kernels/native.py) or
    ATen's `_weight_int8pack_mm`, Python or C++ wrapper."""
    return len(_WEIGHT_ONLY_INT8.findall(code))


_TORCH_INT4 = (r"torch\.ops\.quantized\.int4mm_packed_weight_cpu\.default\("
               r"|aoti_torch_cpu__weight_int4pack_mm_cpu_tensor\(|CppWoqInt4GemmTemplate")
_OUR_INT4 = r"torch\.ops\.iq_onednn\.woq_int4_linear\.\w+\(|\"iq_onednn::woq_int4_linear\""
_WEIGHT_ONLY_INT4 = {"torch": re.compile(_TORCH_INT4), "ours": re.compile(_OUR_INT4)}


def weight_only_int4_calls(code: str, kernel: str = "any") -> int:
    """Calls of a weight-only int4 linear: ours (`iq_onednn.woq_int4_linear`, kernels/native.py)
    or torch's int4 CPU GEMM (`_weight_int4pack_mm_for_cpu`, run as
    `quantized.int4mm_packed_weight_cpu`, or its GEMM-template kernels); Python or C++ wrapper.
    `kernel`: "ours", "torch" or "any"."""
    return sum(len(p.findall(code)) for name, p in _WEIGHT_ONLY_INT4.items() if kernel in ("any", name))


def float_compute_calls(code: str) -> collections.Counter:
    """fp32/bf16 convolution / GEMM calls left in `code`, by op name."""
    return collections.Counter(next(g for g in m.groups() if g) for m in _FLOAT_COMPUTE.finditer(code))


def int8_gemm_template_calls(code: str) -> int:
    """Calls of kernels built from Inductor's C++ GEMM template with an int8 micro-kernel (how an
    int8 linear runs under max-autotune): int8 compute in generated code, not a oneDNN call.
    The micro-kernel sits in the kernel's source block (Python wrapper) or in inline functions
    named after the kernel (C++ wrapper)."""
    starts = [(m.start(), m.group(1)) for m in _KERNEL_NAME.finditer(code) if m.group(1)]
    blocks = {name: code[at:starts[i + 1][0] if i + 1 < len(starts) else len(code)]
              for i, (at, name) in enumerate(starts)}
    calls = 0
    for name in {m.group(1) or m.group(2) for m in _KERNEL_NAME.finditer(code)}:
        micro = "".join(re.findall(rf"inline void {name}_micro_gemm\w*\(.*?\n}}\n", code, re.S))
        source = blocks.get(name, "") + micro
        if "micro_gemm" in source and _INT8_MICRO_GEMM.search(source):
            calls += len(re.findall(rf"(?<!void )\b{name}\(", code))
    return calls


def inductor_kernel_calls(code: str) -> int:
    """Calls of the kernels Inductor generated (`cpp_fused_*`, either wrapper), not their definitions."""
    names = {m.group(1) or m.group(2) for m in _KERNEL_NAME.finditer(code)}
    return sum(len(re.findall(rf"(?<!void )\b{name}\(", code)) for name in names)


_ATTENTION = re.compile(r"torch\.ops\.iq_onednn\.attention\.\w+\(|\"iq_onednn::attention\""
                        r"|torch\.ops\.aten\.(_scaled_dot_product_flash_attention_for_cpu)\.\w+\("
                        r"|aoti_torch_cpu_(_scaled_dot_product_flash_attention_for_cpu)\(")


def attention_calls(code: str) -> collections.Counter:
    """{"ours": n, "torch": m}: fused attention calls in `code`, ours (`iq_onednn.attention`,
    passes/attention.py) or torch's CPU flash attention."""
    return collections.Counter("torch" if m.group(1) or m.group(2) else "ours" for m in _ATTENTION.finditer(code))


_LAYER_NORM_QUANT = re.compile(r"torch\.ops\.iq_onednn\.layer_norm_quant\.\w+\(|\"iq_onednn::layer_norm_quant\"")


def layer_norm_quant_calls(code: str) -> int:
    """Calls of our layer norm + quantize (`iq_onednn.layer_norm_quant`, passes/norms.py) in `code`."""
    return len(_LAYER_NORM_QUANT.findall(code))


def prepacks_at_runtime(code: str) -> bool:
    """A weight prepack still called at run time (freezing did not fold it into a constant)."""
    return bool(_PREPACK.search(code))


__all__ = ["onednn_int8_calls", "own_kernel_calls", "attention_calls", "layer_norm_quant_calls", "onednn_fp16_calls", "count", "float_compute_calls", "int8_gemm_template_calls",
           "inductor_kernel_calls", "prepacks_at_runtime", "weight_only_int4_calls"]
