"""The CPU facts (kernels/cpu.py), each checked against something that does not restate it: an
emulation of the int16 pair-sum instruction, the real kernel, oneDNN's own report of its ISA
under several caps, and the config users get."""

import itertools
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import inductor_quant
from inductor_quant.kernels import compat, cpu, probe
from inductor_quant.kernels.onednn import QParams, eager, qlinear, qlinear_prepack
from inductor_quant.quantizer import get_default_x86_inductor_quantization_config

XEON_AMX = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
EPYC_ZEN3 = {"avx2"}
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
INT16 = torch.iinfo(torch.int16)


# --- the int16 pair sums: an emulation of the instruction, and the real kernel --------------


def vpmaddubsw(a0, w0, a1, w1):
    """What a CPU without VNNI computes for a pair: u8*s8 + u8*s8, saturated to int16."""
    exact = a0.int() * w0.int() + a1.int() * w1.int()
    return exact.clamp(INT16.min, INT16.max), exact


def saturates_somewhere(act_max: torch.Tensor, w_lo: torch.Tensor, w_hi: torch.Tensor) -> torch.Tensor:
    """For each case (activations in [0, act_max], weights in [w_lo, w_hi]): does some pair of
    boundary and middle values saturate?"""
    a = torch.stack([torch.zeros_like(act_max), act_max // 2, act_max], dim=1)
    w = torch.stack([w_lo, w_lo // 2, torch.zeros_like(w_lo), w_hi // 2, w_hi], dim=1)
    products = (a[:, :, None] * w[:, None, :]).flatten(1).int()  # every (a, w) of a case
    n = products.shape[1]
    first, second = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    one = torch.ones((), dtype=torch.int32)
    sat, exact = vpmaddubsw(products[:, first], one, products[:, second], one)
    return (sat != exact).any(dim=1)


def test_pair_sums_fit_is_exactly_where_the_instruction_saturates():
    """Every activation range [0, 0..255] and every symmetric weight range [-m, m]: the bound
    holds exactly where no pair saturates; on [-128, 127] it is safe everywhere and exact except
    at activation max 128 (the negative side reaches -32768 exactly, which fits)."""
    act_max, m = (g.flatten() for g in torch.meshgrid(torch.arange(256), torch.arange(128), indexing="ij"))
    emulated = ~saturates_somewhere(act_max, -m, m)
    predicted = torch.tensor([cpu.pair_sums_fit(a, b) for a, b in zip(act_max.tolist(), m.tolist())])
    wrong = torch.nonzero(predicted != emulated).flatten()
    assert wrong.numel() == 0, list(zip(act_max[wrong].tolist(), m[wrong].tolist()))[:10]
    act_max = torch.arange(256)
    emulated = ~saturates_somewhere(act_max, torch.full_like(act_max, -128), torch.full_like(act_max, 127))
    predicted = torch.tensor([cpu.pair_sums_fit(int(a), 128) for a in act_max])
    assert not (predicted & ~emulated).any()  # never claims a fit that saturates
    assert torch.nonzero(predicted != emulated).flatten().tolist() == [128]


def run_pairs_on_kernel(acts: list, weights: list):
    """Every pair of `acts` times every pair of `weights` through oneDNN's u8 x s8 matmul (K=2):
    (kernel output, exact result, the emulated saturating result)."""
    x = torch.tensor(list(itertools.product(acts, acts)), dtype=torch.int32)
    w = torch.tensor(list(itertools.product(weights, weights)), dtype=torch.int32)
    with torch.no_grad():
        packed = qlinear_prepack(eager, w.to(torch.int8), list(x.shape))
        y = qlinear(eager, x.to(torch.uint8), QParams(1.0, 0), packed, torch.ones(len(w)),
                    torch.zeros(len(w), dtype=torch.int64), None)
    emulated, exact = vpmaddubsw(x[:, None, 0], w[None, :, 0], x[:, None, 1], w[None, :, 1])
    return y, exact.float(), emulated.float()


def test_this_kernel_saturates_exactly_like_the_instruction_or_not_at_all():
    """The real kernel on boundary pairs: exact where cpu_info() says VNNI, else equal to the
    emulated instruction in every entry (run with ONEDNN_MAX_CPU_ISA=AVX2 to see that side)."""
    y, exact, emulated = run_pairs_on_kernel([0, 1, 127, 128, 129, 254, 255], [-128, -127, -65, -64, -1, 0, 1, 63, 64, 127])
    assert not torch.equal(emulated, exact)  # the boundary values do reach saturation
    if inductor_quant.cpu_info().vnni:
        assert torch.equal(y, exact)
    else:
        assert torch.equal(y, emulated)


def test_default_config_is_exact_on_this_kernel():
    """The ranges the default config picks here compute exactly on this CPU's kernel at their
    extremes (8-bit weights need VNNI; 7-bit weights or 7-bit activations fit everywhere)."""
    auto = get_default_x86_inductor_quantization_config()
    w, act = auto.weight, auto.input_activation
    assert (w.quant_min, w.quant_max) == cpu.cpu_info().int8_weight_range and act.quant_max == 255
    narrow = get_default_x86_inductor_quantization_config(reduce_range=True)
    for config in (auto, narrow):
        a, wt = config.input_activation, config.weight
        y, exact, _ = run_pairs_on_kernel([0, a.quant_max], [wt.quant_min, 0, wt.quant_max])
        assert torch.equal(y, exact), (a.quant_max, wt.quant_min, wt.quant_max)
    full = get_default_x86_inductor_quantization_config(reduce_range=False)  # an explicit argument is honored
    assert (full.input_activation.quant_max, full.weight.quant_min, full.weight.quant_max) == (255, -128, 127)
    assert (narrow.input_activation.quant_max, narrow.weight.quant_min, narrow.weight.quant_max) == (127, -128, 127)
    assert get_default_x86_inductor_quantization_config(reduce_range="auto") is auto
    for kw in ({"is_qat": True}, {"is_dynamic": True}):
        assert get_default_x86_inductor_quantization_config(**kw).weight.quant_min == w.quant_min
    with pytest.raises(ValueError, match="reduce_range"):
        get_default_x86_inductor_quantization_config(reduce_range="yes")


# --- where the facts come from ---------------------------------------------------------------


def test_public_cpu_info_is_this_process():
    info = inductor_quant.cpu_info()
    assert info is cpu.cpu_info() and info.vector == torch.backends.cpu.get_cpu_capability()
    assert info.int8_exact is not None  # the kernel probe ran: it, not the table, decided VNNI
    # the table's own answer (used where the probe cannot run) agrees with the kernel here
    table = cpu.features_under_cap(cpu.cpu_features()[1], cpu.onednn_cap())
    assert any(f in table for f in cpu.INT8_DOT) == (not probe.int8_pair_sums_saturate())


def test_features_come_from_torchs_cpuinfo_else_proc(monkeypatch):
    assert compat.cpu_capabilities() and compat.missing() == []
    monkeypatch.setattr(compat, "cpu_capabilities", lambda: {"avx2": True, "avx512_f": False, "cpu_name": "Some CPU"})
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: ("", {"avx2", "avx512f", "avx512_vnni"}))
    assert cpu.cpu_features() == ("Some CPU", frozenset({"avx2"}))  # torch's report wins, /proc names nothing
    monkeypatch.setattr(compat, "cpu_capabilities", lambda: {})
    monkeypatch.setattr(cpu, "_proc_cpuinfo", lambda: ("A CPU", {"avx2", "avx512f", "avx512_vnni", "sse4_2"}))
    assert cpu.cpu_features() == ("A CPU", frozenset({"avx2", "avx512f", "avx512_vnni"}))


@pytest.mark.parametrize("probe_says, cap, vnni, dot_features", [
    (False, "", False, set()),                  # the kernel saturates: no VNNI whatever the flags
    (True, "AVX2", True, set()),                # the kernel is exact: VNNI even where the table says no
    (None, "AVX512_CORE_VNNI", True, {"avx512_vnni"}),  # no probe: the table decides
    (None, "SOMETHING_NEW", False, set()),      # no probe and a cap the table does not know: no VNNI
    (True, "SOMETHING_NEW", True, {"amx_int8", "avx512_vnni", "avx_vnni"}),  # oneDNN ignores the name
])
def test_the_kernel_probe_decides_vnni(monkeypatch, probe_says, cap, vnni, dot_features):
    monkeypatch.setattr(cpu, "cpu_features", lambda: ("x", frozenset(XEON_AMX)))
    monkeypatch.setattr(cpu, "_probe_int8_exact", lambda: probe_says)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    info = cpu.cpu_info.__wrapped__()
    assert info.vnni == vnni and info.int8_weight_range == ((-128, 127) if vnni else (-64, 63))
    assert info.features & set(cpu.INT8_DOT) == dot_features
    assert ("no VNNI" in info.summary()) == (not vnni)


def test_cap_table_names_resolve_and_never_add_what_the_cpu_lacks():
    for cap in [*cpu._CAP_STEPS, *cpu._CAP_ALIASES]:
        assert cpu.cap_allows(cap) is not None and cpu.cap_allows(cap) <= set(cpu.FEATURES), cap
        assert cpu.features_under_cap(EPYC_ZEN3, cap) <= EPYC_ZEN3
    assert cpu.cap_allows("SOMETHING_NEW") is None and cpu.features_under_cap(XEON_AMX, "SOMETHING_NEW") == XEON_AMX


def test_cap_is_read_like_onednn_reads_it(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    assert cpu.onednn_cap() == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu.onednn_cap() == ""


# what the child prints: oneDNN's verbose header (its ISA in words) and our facts as JSON
_CHILD = """
import json
from inductor_quant.kernels import cpu, probe
saturates = probe.int8_pair_sums_saturate()  # the first primitive: oneDNN prints its header
table = cpu.features_under_cap(cpu.cpu_features()[1], cpu.onednn_cap())
print("FACTS " + json.dumps({"saturates": saturates, "table": sorted(table), "info": cpu.cpu_info().as_dict()}))
"""
CAPS = ["", "AVX2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "SOMETHING_NEW"]


@pytest.fixture(scope="module")
def under_caps():
    """{cap: (oneDNN's ISA line, our facts)}, one child process per cap, run side by side."""
    base = {k: v for k, v in os.environ.items() if k not in cpu.CAP_VARS}
    procs = {cap: subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**base, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1",
                                                  **({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})})
             for cap in CAPS}
    out = {}
    for cap, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        isa = next(line.split("isa:", 1)[1] for line in stdout.splitlines() if ",info,cpu,isa:" in line)
        facts = json.loads(next(line[6:] for line in stdout.splitlines() if line.startswith("FACTS ")))
        out[cap] = (isa, facts)
    return out


@pytest.mark.skipif(not X86, reason="oneDNN's x86 ISA caps")
@pytest.mark.parametrize("cap", CAPS)
def test_facts_agree_with_what_onednn_runs_under_the_cap(under_caps, cap):
    """Under each cap, in a fresh process: the table's VNNI answer is the kernel's; the table's
    AMX and bf16 answers are what oneDNN's verbose header says it dispatches to (in its words:
    "... AMX with bfloat16 ...", "AVX 10.1" includes bf16, an AVX2 ISA converts bf16 at most)."""
    isa, facts = under_caps[cap]
    table, info = set(facts["table"]), facts["info"]
    assert any(f in table for f in cpu.INT8_DOT) == (not facts["saturates"]), (isa, table)
    assert info["vnni"] == (not facts["saturates"]) and info["vnni_probed"]
    assert ("amx_int8" in table) == ("AMX" in isa), (isa, table)
    said_bf16 = not isa.startswith("Intel AVX2") and ("bfloat16" in isa or "AVX 10" in isa or "AVX10" in isa)
    assert any(f in table for f in cpu.BF16_NATIVE) == info["bf16_native"] == said_bf16, (isa, table)
    if cap == "SOMETHING_NEW":  # oneDNN ignores a name it does not know, and so do we
        assert (isa, table) == (under_caps[""][0], set(under_caps[""][1]["table"]))


def test_summary_says_what_follows_for_int8_and_bf16():
    epyc = cpu.CpuInfo("AMD EPYC (Zen 3)", frozenset(EPYC_ZEN3), "", "AVX2")
    assert epyc.summary() == ("AMD EPYC (Zen 3) | AVX2, no VNNI: int8 weights use 7 bits (8-bit products would "
                              "saturate); bf16 emulated (slow: bf16 modes not recommended) | vector AVX2")
    xeon = cpu.CpuInfo("Xeon", frozenset(XEON_AMX), "", "AVX512")
    assert xeon.summary() == "Xeon | AMX int8/bf16, AVX-512 VNNI: int8 weights use 8 bits; bf16 native | vector AVX512"
    capped = cpu.CpuInfo("Xeon", frozenset({"avx2"}), "AVX2", "AVX512", int8_exact=False)
    assert capped.summary().endswith("| vector AVX512; oneDNN capped at AVX2") and "no VNNI" in capped.summary()


def _cpuinfo_text(vendor: str, family: int, model: int, name: str = "AMD EPYC") -> str:
    one = (f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
           f"model name\t: {name}\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n")
    return one.format(n=0) + one.format(n=1).replace(name, "Other")


@pytest.mark.parametrize("family,model,named", [
    (26, 2, "AMD EPYC (family 26, model 2: Zen 5)"), (25, 17, "AMD EPYC (family 25, model 17: Zen 4)"),
    (25, 1, "AMD EPYC (family 25, model 1: Zen 3)"), (25, 0x90, "AMD EPYC (family 25, model 144)")])
def test_an_epyc_says_its_generation(family, model, named):
    """Cloud VMs name every EPYC "AMD EPYC"; a result must say which one it ran on."""
    name, flags = cpu.parse_cpuinfo(_cpuinfo_text("AuthenticAMD", family, model))
    assert name == named and "avx512_vnni" in flags


def test_an_intel_cpu_says_its_family_and_model_only():
    name, _ = cpu.parse_cpuinfo(_cpuinfo_text("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+"))
    assert name == "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)"
