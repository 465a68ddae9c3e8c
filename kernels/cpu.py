"""What this CPU does for int8 and bf16, as oneDNN will dispatch: the one place that knows.

Two facts decide numerics and speed:

- **VNNI** (avx512_vnni, avx_vnni or amx_int8): oneDNN's u8 x s8 dot products accumulate in
  int32. Without it (AVX2 or plain AVX-512: AMD Zen 1-3, Intel before Cascade Lake, many cloud
  VMs) they go through `vpmaddubsw`, which adds each *pair* of u8*s8 products in int16 and
  saturates at 32767: 255 * 127 * 2 = 64770 overflows. A layer fuses exactly there only if
  2 * activation max * weight max <= 32767 (`pair_sums_fit`): 8-bit activations with 7-bit
  weights [-64, 63] (what the default config picks on such a CPU: `int8_weight_range`), or
  7-bit activations with 8-bit weights (`reduce_range=True`).
- **native bf16** (avx512_bf16 or amx_bf16): otherwise bf16 is emulated (~10x slower than fp32
  in oneDNN), and bf16 modes are not worth running.

oneDNN reads `ONEDNN_MAX_CPU_ISA` (older name `DNNL_MAX_CPU_ISA`) once at process start and then
dispatches only up to that ISA, so the CPU flags alone overstate what runs: `cpu_info()` takes the
flags from /proc/cpuinfo and keeps only those the cap allows. `probe.int8_pair_sums_saturate()` asks
the kernel itself (tests check that the two agree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform

import torch

INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")  # int32 accumulation of u8*s8 products
BF16_NATIVE = ("amx_bf16", "avx512_bf16")
FEATURES = ("avx2", "avx512f", *INT8_DOT, *BF16_NATIVE)

# oneDNN's ISA cap -> the features below it that it may still use. Conservative where oneDNN's
# own lattice is unclear: claiming VNNI that is not used would give wrong results; missing one
# only costs speed (7-bit activations).
_AVX512 = ("avx2", "avx512f")
_CAP_ALLOWS = {
    "SSE41": (), "AVX": (), "AVX2": ("avx2",), "AVX2_VNNI": ("avx2", "avx_vnni"),
    "AVX2_VNNI_2": ("avx2", "avx_vnni"), "AVX512_CORE": _AVX512,
    "AVX512_CORE_VNNI": (*_AVX512, "avx512_vnni"),
    "AVX512_CORE_BF16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "AVX10_1_512": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
}
for _amx in ("AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16"):
    _CAP_ALLOWS[_amx] = (*_AVX512, "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INT16_MAX = 32767


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    features: frozenset  # of FEATURES, as oneDNN may use them (after the cap)
    onednn_cap: str      # "" when oneDNN runs uncapped
    vector: str          # the vector ISA ATen/Inductor code runs (torch.backends.cpu)

    @property
    def vnni(self) -> bool:
        """oneDNN's int8 dot products accumulate in int32 (no int16 pair saturation)."""
        return any(f in self.features for f in INT8_DOT)

    @property
    def bf16_native(self) -> bool:
        return any(f in self.features for f in BF16_NATIVE)

    @property
    def int8_weight_range(self) -> tuple[int, int]:
        """The weight range the default config uses here: 8 bits with VNNI, else 7 bits
        (with 8-bit activations the int16 pair sums then cannot saturate)."""
        return (-128, 127) if self.vnni else (-64, 63)

    def isa(self) -> str:
        """The int8/bf16 instruction sets in a few words, e.g. 'AMX int8/bf16, AVX-512 VNNI'."""
        f = self.features
        parts = []
        if "amx_int8" in f:
            parts.append("AMX int8/bf16" if "amx_bf16" in f else "AMX int8")
        if "avx512_vnni" in f:
            parts.append("AVX-512 VNNI")
        elif "avx_vnni" in f:
            parts.append("AVX-VNNI")
        if "avx512_bf16" in f and "amx_bf16" not in f:
            parts.append("AVX-512 bf16")
        if not parts:
            parts.append("AVX-512" if "avx512f" in f else "AVX2" if "avx2" in f else "no AVX2")
            parts[-1] += ", no VNNI"
        return ", ".join(parts)

    def summary(self) -> str:
        """One line a user understands: what runs, and what follows for int8 and bf16."""
        int8 = ("int8 weights use 8 bits" if self.vnni
                else "int8 weights use 7 bits (8-bit products would saturate)")
        bf16 = "bf16 native" if self.bf16_native else "bf16 emulated (slow: bf16 modes not recommended)"
        cap = f"; oneDNN capped at {self.onednn_cap}" if self.onednn_cap else ""
        return f"{self.model} | {self.isa()}: {int8}; {bf16} | vector {self.vector}{cap}"

    def as_dict(self) -> dict:
        return {"cpu": self.model, "features": sorted(self.features), "onednn_cap": self.onednn_cap,
                "vector": self.vector, "vnni": self.vnni, "bf16_native": self.bf16_native,
                "summary": self.summary()}


def _proc_cpuinfo() -> tuple[str, set]:
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    return model, flags


def onednn_cap() -> str:
    """The ISA cap oneDNN was started with ('' = none; DEFAULT / ALL mean none)."""
    for var in CAP_VARS:
        value = os.environ.get(var, "").strip().upper()
        if value:
            return "" if value in ("DEFAULT", "ALL") else value
    return ""


def features_under_cap(flags: set, cap: str) -> frozenset:
    have = {f for f in FEATURES if f in flags}
    if cap:
        have &= set(_CAP_ALLOWS.get(cap, ()))
    return frozenset(have)


@functools.cache
def cpu_info() -> CpuInfo:
    """This process's CPU as oneDNN sees it (the cap is read once, as oneDNN reads it)."""
    model, flags = _proc_cpuinfo()
    cap = onednn_cap()
    return CpuInfo(model, features_under_cap(flags, cap), cap, torch.backends.cpu.get_cpu_capability())


def pair_sums_fit(act_max: int, weight_absmax: int) -> bool:
    """Can two u8*s8 products added in int16 (`vpmaddubsw`) not saturate? Exact test."""
    return 2 * act_max * weight_absmax <= INT16_MAX


def fuses_exactly(act_max: int, weight_absmax: int = 128) -> bool:
    """Does oneDNN's int8 kernel on this CPU compute activations up to `act_max` (raw uint8 value)
    times int8 weights up to `weight_absmax` exactly?"""
    return cpu_info().vnni or pair_sums_fit(act_max, weight_absmax)


__all__ = ["CpuInfo", "cpu_info", "fuses_exactly", "pair_sums_fit"]
