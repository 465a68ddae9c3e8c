"""The `torch.compile` options under which a converted model runs fastest on this CPU.

One line for users: `torch.compile(converted, options=inductor_quant.fast_options())`.
Measured with `inductor-quant bench` (README, "Speed"):

- `freezing`: our passes fuse and prepack at freezing time; without it nothing fuses.
- `cpp_wrapper`: no Python between kernels; the per-call cost matters at small batch
  (ResNet-50 bs1: 7-14 % faster).
- Inductor's C++ GEMM template for the int8 linears (`max_autotune` with the CPP backend):
  generated AMX / AVX-512-VNNI int8 micro-kernels with the dequantize, bias, post-op and
  requantize fused in, instead of a oneDNN call with ATen's per-call layer around it
  (BERT-base bs1: 15-20 % faster). It has int8 micro-kernels only for AMX and AVX-512 VNNI,
  so elsewhere it is left off. Autotuning (template vs oneDNN, per layer) costs compile time
  (BERT-base: ~3-5x Inductor fp32's compile).
  Our passes emit the linears' residual add out of place under it: the template computes the
  in-place `sum` wrong (passes/kernel_limits.gemm_template_may_run).

bf16 autocast around the calls (int8-mixed-bf16) is a further gain for transformers where
bf16 is native (`cpu_info().bf16_native`); it is not a compile option.
"""

from __future__ import annotations

from typing import Optional

from .kernels.cpu import CpuInfo, cpu_info

GEMM_TEMPLATE_ISA = ("amx_int8", "avx512_vnni")  # where Inductor's template has u8 x s8 micro-kernels


def fast_options(info: Optional[CpuInfo] = None) -> dict:
    """Inductor options (`torch.compile(..., options=...)`) for the fastest int8 on `info`'s CPU."""
    info = info or cpu_info()
    options = {"freezing": True, "cpp_wrapper": True}
    if any(f in info.features for f in GEMM_TEMPLATE_ISA):
        # ATen stays a choice: autotuning keeps whichever is faster per layer, and a GEMM the
        # template cannot take (an unfused float one, say) still compiles
        options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    return options


__all__ = ["fast_options"]
