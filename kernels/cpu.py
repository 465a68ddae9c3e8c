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
dispatches only up to that ISA, so the CPU's features alone overstate what runs. Where each fact
comes from, the most direct source first:

- VNNI: the kernel. `probe.int8_pair_sums_saturate()` runs one u8 x s8 matmul (a few ms, once);
  it saturates exactly when oneDNN adds pairs in int16, under any cap, on any OS. Only when it
  cannot run (a torch without oneDNN) do the features and the cap table decide.
- the CPU's features: torch's cpuinfo (`compat.cpu_capabilities()`: Linux, Windows and macOS
  alike, and only what the OS enabled); /proc/cpuinfo's flags where torch reports none. The model
  name comes from /proc/cpuinfo where there is one (cpuinfo shortens it).
- what the cap leaves of them (bf16 and AMX: the words users read, `fast_options()`): the cap
  table `_CAP_STEPS`. It remains because nothing cheaper tells: torch does not export oneDNN's C
  API (no effective-ISA query), oneDNN's verbose mode prints its ISA once per process and in
  prose ("Intel AVX 10.1" for a cap that includes bf16), and emulated bf16 computes the same
  numbers as native, so no numeric probe can see it. A wrong bf16 answer costs only speed advice.
  tests/kernels/test_cpu.py checks the table against the probe and against oneDNN's verbose ISA
  line under several caps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
from typing import Optional

import torch

from . import compat, probe

INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")  # int32 accumulation of u8*s8 products
BF16_NATIVE = ("amx_bf16", "avx512_bf16")
FEATURES = ("avx2", "avx512f", *INT8_DOT, *BF16_NATIVE)
# torch's cpuinfo names -> ours (/proc/cpuinfo's)
_TORCH_NAMES = {"avx2": "avx2", "avx512_f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
                "avx512_bf16": "avx512_bf16", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16"}

# oneDNN's cap names, each as (the cap it extends, the features it adds): oneDNN's ISAs are
# cumulative, so a row states only its own step and `cap_allows` walks down the ladder. Aliases
# name the same rung. Not derived from a probe: see the module docstring.
_CAP_STEPS = {
    "SSE41": (None, ()), "AVX": ("SSE41", ()), "AVX2": ("AVX", ("avx2",)),
    "AVX2_VNNI": ("AVX2", ("avx_vnni",)), "AVX2_VNNI_2": ("AVX2_VNNI", ()),
    "AVX512_CORE": ("AVX2", ("avx512f",)), "AVX512_CORE_VNNI": ("AVX512_CORE", ("avx512_vnni",)),
    "AVX512_CORE_BF16": ("AVX512_CORE_VNNI", ("avx512_bf16",)), "AVX10_1_512": ("AVX512_CORE_BF16", ()),
    "AVX10_1_512_AMX": ("AVX10_1_512", ("amx_int8", "amx_bf16")), "AVX10_1_512_AMX_FP16": ("AVX10_1_512_AMX", ()),
    "AVX10_2_512": ("AVX10_1_512", ()), "AVX10_2_512_AMX_2": ("AVX10_2_512", ("amx_int8", "amx_bf16")),
}
_CAP_ALIASES = {"AVX512_CORE_FP16": "AVX10_1_512", "AVX512_CORE_AMX": "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16"}
CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INT16_MAX = 32767


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    features: frozenset  # of FEATURES, as oneDNN may use them (after the cap)
    onednn_cap: str      # "" when oneDNN runs uncapped
    vector: str          # the vector ISA ATen/Inductor code runs (torch.backends.cpu)
    int8_exact: Optional[bool] = None  # what the kernel probe saw; None: not run (features decide)

    @property
    def vnni(self) -> bool:
        """oneDNN's int8 dot products accumulate in int32 (no int16 pair saturation)."""
        if self.int8_exact is not None:
            return self.int8_exact
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
        if not any(p.startswith(("AMX int8", "AVX-512 VNNI", "AVX-VNNI")) for p in parts):
            base = "AVX-512" if "avx512f" in f else "AVX2" if "avx2" in f else "no AVX2"
            # exact int8 without a VNNI flag: the probe saw int32 accumulation (a CPU cpuinfo misreads)
            parts.insert(0, base + (", int8 exact" if self.vnni else ", no VNNI"))
        return ", ".join(parts)

    def summary(self) -> str:
        """One line a user understands: what runs, and what follows for int8 and bf16."""
        int8 = ("int8 weights use 8 bits" if self.vnni
                else "int8 weights use 7 bits (8-bit products would saturate)")
        bf16 = "bf16 native" if self.bf16_native else "bf16 emulated (slow: bf16 modes not recommended)"
        cap = ""
        if self.onednn_cap:
            known = cap_allows(self.onednn_cap) is not None
            cap = f"; oneDNN capped at {self.onednn_cap}" + ("" if known else " (a name oneDNN ignores: no cap)")
        return f"{self.model} | {self.isa()}: {int8}; {bf16} | vector {self.vector}{cap}"

    def as_dict(self) -> dict:
        return {"cpu": self.model, "features": sorted(self.features), "onednn_cap": self.onednn_cap,
                "vector": self.vector, "vnni": self.vnni, "bf16_native": self.bf16_native,
                "vnni_probed": self.int8_exact is not None, "summary": self.summary()}


def _proc_cpuinfo() -> tuple[str, set]:
    """(model name, flags) from /proc/cpuinfo; ("", set()) where there is none."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    return "", set()


def parse_cpuinfo(text: str) -> tuple[str, set]:
    """(model, flags) from the first processor of a /proc/cpuinfo text. The model is the model
    name with the family and model numbers, and for AMD the core generation they mean: cloud VMs
    name an EPYC of any generation "AMD EPYC", and results taken on a Zen 4 and a Zen 5 must not
    read alike."""
    fields: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the blank line after the first processor
            continue
        fields.setdefault(key.strip(), value.strip())
    name, flags = fields.get("model name", ""), set(fields.get("flags", "").split())
    family, number = fields.get("cpu family", ""), fields.get("model", "")
    if name and family.isdigit() and number.isdigit():
        generation = amd_generation(int(family), int(number)) if fields.get("vendor_id") == "AuthenticAMD" else ""
        name += f" (family {family}, model {number}{': ' + generation if generation else ''})"
    return name, flags


def amd_generation(family: int, model: int) -> str:
    """AMD's core generation from its family and model numbers ("" where the table has none)."""
    if family == 0x17:
        return "Zen or Zen 2"
    if family == 0x19:
        if model <= 0x0F or 0x20 <= model <= 0x5F:
            return "Zen 3"
        if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF:
            return "Zen 4"
        return ""
    return "Zen 5" if family == 0x1A else ""


def cpu_features() -> tuple[str, frozenset]:
    """(model, the CPU's FEATURES before any cap): torch's cpuinfo, else /proc/cpuinfo."""
    caps = compat.cpu_capabilities()
    proc_model, proc_flags = _proc_cpuinfo()
    if caps:
        have = {ours for theirs, ours in _TORCH_NAMES.items() if caps.get(theirs) is True}
    else:
        have = {f for f in FEATURES if f in proc_flags}
    model = proc_model or str(caps.get("cpu_name") or "") or platform.processor() or platform.machine()
    return model, frozenset(have)


def onednn_cap() -> str:
    """The ISA cap oneDNN was started with ('' = none; DEFAULT / ALL mean none)."""
    for var in CAP_VARS:
        value = os.environ.get(var, "").strip().upper()
        if value:
            return "" if value in ("DEFAULT", "ALL") else value
    return ""


def cap_allows(cap: str) -> Optional[frozenset]:
    """The FEATURES oneDNN may use under `cap`; None for a cap this table does not know."""
    name = _CAP_ALIASES.get(cap, cap)
    if name not in _CAP_STEPS:
        return None
    allowed: set = set()
    while name is not None:
        name, adds = _CAP_STEPS[name]
        allowed.update(adds)
    return frozenset(allowed)


def features_under_cap(flags, cap: str) -> frozenset:
    """The CPU's features that oneDNN may use under `cap`, by the table; a cap never adds what the
    CPU lacks. oneDNN ignores a cap name it does not know (runs uncapped), and so does this."""
    have = {f for f in FEATURES if f in flags}
    allowed = cap_allows(cap) if cap else None
    return frozenset(have if allowed is None else have & allowed)


def _probe_int8_exact() -> Optional[bool]:
    """The kernel's own answer: no pair saturation. None when it cannot run (it proves nothing)."""
    try:
        return not probe.int8_pair_sums_saturate()
    except Exception:  # noqa: BLE001 - no oneDNN int8 kernel here: the table decides
        return None


def _vector_isa() -> str:
    """ATen's vector ISA (what Inductor's generated code and ATen's kernels run), for the summary."""
    with contextlib.suppress(Exception):
        return str(torch.backends.cpu.get_cpu_capability())
    return "unknown"


@functools.cache
def cpu_info() -> CpuInfo:
    """This process's CPU as oneDNN sees it (the cap is read once, as oneDNN reads it)."""
    model, flags = cpu_features()
    cap = onednn_cap()
    features = features_under_cap(flags, cap)
    exact = _probe_int8_exact()
    # the kernel saturates: whatever the table said, no int8 dot product runs; and with no probe,
    # a cap the table does not know is not trusted with exactness
    if exact is False or (exact is None and cap and cap_allows(cap) is None):
        features -= set(INT8_DOT)
    return CpuInfo(model, features, cap, _vector_isa(), exact)


def pair_sums_fit(act_max: int, weight_absmax: int) -> bool:
    """Can two u8*s8 products added in int16 (`vpmaddubsw`), activations in [0, act_max] and
    weights in [-weight_absmax, weight_absmax], not saturate? Exact for such symmetric ranges;
    for [-128, 127] (absmax 128) it errs on the safe side at act_max 128 only."""
    return 2 * act_max * weight_absmax <= INT16_MAX


def fuses_exactly(act_max: int, weight_absmax: int = 128) -> bool:
    """Does oneDNN's int8 kernel on this CPU compute activations up to `act_max` (raw uint8 value)
    times int8 weights up to `weight_absmax` exactly?"""
    return cpu_info().vnni or pair_sums_fit(act_max, weight_absmax)


__all__ = ["CpuInfo", "cpu_info", "fuses_exactly", "pair_sums_fit"]
