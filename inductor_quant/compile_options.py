"""The `torch.compile` options under which a converted model ran fastest at batch 1 on this CPU.

One line for users: `torch.compile(converted, options=inductor_quant.fast_options())`.
Measured with `inductor-quant bench` on an Intel Xeon with AMX, 2 threads (README, "Speed"; the
row-by-row record in docs/PERFORMANCE.md), unless said otherwise:

- `freezing`: our passes fuse and prepack at freezing time; without it nothing fuses.
- `cpp_wrapper`: no Python between kernels; the per-call cost matters at small batch
  (ResNet-50 bs1 7.7 -> 7.1 ms, MobileNetV2 bs1 4.6 -> 4.1 ms). Not a gain everywhere: BERT-base
  bs8 ran slower with it (91.0 -> 100.5 ms).
- Inductor's C++ GEMM template for the int8 linears (`max_autotune` with the CPP backend), on
  AMX CPUs only: generated AMX int8 micro-kernels with the dequantize, bias, post-op and
  requantize fused in, instead of a oneDNN call with ATen's per-call layer around it
  (BERT-base bs1 20.0 -> 18.7 ms; under bf16 autocast 19.1 -> 16.4 ms, measured before our own
  kernel calls). Autotuning (template vs oneDNN, per layer) costs compile time: 2.56-2.81x
  Inductor fp32's compile on the transformers, 0.74-1.10x on the convnets.
  Where the template has only AVX-512 VNNI micro-kernels (AMD Zen 4 / Zen 5) it was no faster
  than the C++ wrapper with our kernel calls alone and slower at batch 8, for about twice the
  compile (AMD EPYC Zen 5, 2 threads, bf16 autocast, interleaved medians: BERT-base bs1 16.73
  vs 16.45 ms, bs8 112.1 vs 106.4 ms, ViT-B/16 bs1 27.00 vs 26.57 ms; compile 17-23 s vs 11 s;
  Zen 4: BERT-base bs8 308.6 vs 263.8 ms), so there fast_options() leaves it off;
  `template_options()` still asks for it (the configuration the fuzzer proves on those CPUs).
  Our passes emit the linears' residual add out of place under it: the template computes the
  in-place `sum` wrong (passes/kernel_limits.gemm_template_may_run).

- Dynamo's guards on the module's attributes skipped (`guard_filter_fn`:
  `torch.compiler.skip_guard_on_all_nn_modules_unsafe`): before each call Dynamo checks every
  parameter and buffer of the converted model it read while tracing (~1 µs each). Under freezing
  the weights are folded into the compiled code at the first call, so a later change to them goes
  unseen with or without those checks (a buffer replaced by a copy recompiled nothing under
  the default guards either); what the filter adds to that: a parameter or buffer replaced by one
  of another dtype or shape is not seen either (the default guards recompile; tests/e2e/
  test_fast_options.py): compile again after editing the model. The
  inputs' shapes, dtypes and the global state (grad mode, autocast) stay guarded: a new batch
  size or bf16 autocast still recompiles. AMD EPYC Zen 4, 2 threads, blocks of calls
  interleaved: MobileNetV2 bs1 2.23 -> 2.08 ms, ResNet-50 bs1 11.72 -> 11.49 ms; BERT-base bs1
  spends 0.34 ms of 32.2 in that check (profiled).

At batch 8-16 these options were not the fastest: ResNet-50 bs16 ran fastest with freezing and
the C++ wrapper alone (49.2 vs 49.9 ms), BERT-base bs8 with freezing and bf16 autocast under the
Python wrapper (75.5 vs 77.2 ms).

bf16 autocast around the calls (int8-mixed-bf16) is a further gain for transformers where
bf16 is native (`cpu_info().bf16_native`); it is not a compile option.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels.cpu import CpuInfo, cpu_info

GEMM_TEMPLATE_ISA = ("amx_int8", "avx512_vnni")  # where Inductor's template has u8 x s8 micro-kernels
TEMPLATE_FASTER_ISA = ("amx_int8",)  # where its autotune beat our kernel calls (measured; above)
# Dynamo checks none of the compiled module's attributes before a call (above: what that gives up)
skip_module_guards = torch.compiler.skip_guard_on_all_nn_modules_unsafe


def inductor_settings(options: dict) -> dict:
    """`options` without what torch.compile hands to Dynamo (the guard filter): the part that can
    patch `torch._inductor.config`."""
    return {k: v for k, v in options.items() if k != "guard_filter_fn"}


def template_options(info: Optional[CpuInfo] = None) -> dict:
    """Freezing, the C++ wrapper and, where the template has int8 micro-kernels, its autotune
    against torch's op: `fast_options()` on an AMX CPU, and what a user who asks for max-autotune
    gets elsewhere (the differential fuzzer and the template's tests compile with it on every
    CPU that has those micro-kernels)."""
    info = info or cpu_info()
    options = {"freezing": True, "cpp_wrapper": True}
    if any(f in info.features for f in GEMM_TEMPLATE_ISA):
        # ATen stays a choice: autotuning keeps whichever is faster per layer, and a GEMM the
        # template cannot take (an unfused float one, say) still compiles
        options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    return options


def fast_options(info: Optional[CpuInfo] = None) -> dict:
    """`torch.compile(..., options=...)` for the fastest int8 at batch 1 on `info`'s CPU: Inductor's
    (the template's autotune only where it was faster: AMX) and Dynamo's guard filter."""
    info = info or cpu_info()
    options = template_options(info) if any(f in info.features for f in TEMPLATE_FASTER_ISA) \
        else {"freezing": True, "cpp_wrapper": True}
    # a new dict each call: torch.compile takes this key out of the dict it is given
    options["guard_filter_fn"] = skip_module_guards
    return options


__all__ = ["fast_options", "inductor_settings", "skip_module_guards", "template_options"]
