"""The CPU facts (kernels/cpu.py): the ISA cap, the words users read, the config they choose."""

import pytest
import torch

import inductor_quant
from inductor_quant.kernels import cpu, probe
from inductor_quant.quantizer import get_default_x86_inductor_quantization_config

XEON_AMX = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
EPYC_ZEN3 = {"avx2"}


@pytest.mark.parametrize("flags, cap, vnni, bf16", [
    (XEON_AMX, "", True, True),
    (XEON_AMX, "AVX2", False, False),
    (XEON_AMX, "AVX512_CORE", False, False),
    (XEON_AMX, "AVX2_VNNI", True, False),
    (XEON_AMX, "AVX512_CORE_VNNI", True, False),
    (XEON_AMX, "AVX512_CORE_AMX", True, True),
    (XEON_AMX, "SOMETHING_NEW", False, False),  # an unknown cap: assume the least (exact, slower)
    (EPYC_ZEN3, "", False, False),
    (EPYC_ZEN3, "AVX512_CORE_AMX", False, False),  # a cap never adds what the CPU lacks
])
def test_features_are_the_cpus_under_onednns_cap(flags, cap, vnni, bf16):
    info = cpu.CpuInfo("x", cpu.features_under_cap(flags, cap), cap, "AVX2")
    assert (info.vnni, info.bf16_native) == (vnni, bf16)
    assert info.int8_weight_range == ((-128, 127) if vnni else (-64, 63))


def test_cap_is_read_like_onednn_reads_it(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    assert cpu.onednn_cap() == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu.onednn_cap() == ""


def test_summary_says_what_follows_for_int8_and_bf16():
    epyc = cpu.CpuInfo("AMD EPYC (Zen 3)", frozenset(EPYC_ZEN3), "", "AVX2")
    assert epyc.summary() == ("AMD EPYC (Zen 3) | AVX2, no VNNI: int8 weights use 7 bits (8-bit products would "
                              "saturate); bf16 emulated (slow: bf16 modes not recommended) | vector AVX2")
    xeon = cpu.CpuInfo("Xeon", frozenset(XEON_AMX), "", "AVX512")
    assert xeon.summary() == "Xeon | AMX int8/bf16, AVX-512 VNNI: int8 weights use 8 bits; bf16 native | vector AVX512"


def test_public_cpu_info_is_this_process():
    info = inductor_quant.cpu_info()
    assert info is cpu.cpu_info() and info.vector == torch.backends.cpu.get_cpu_capability()
    assert info.vnni == (not probe.int8_pair_sums_saturate())  # the facts agree with the kernel


@pytest.mark.parametrize("act_max, w_absmax, fits", [(127, 128, True), (255, 64, True), (255, 65, False), (255, 127, False)])
def test_pair_sums_fit_int16_exactly_when_the_bound_holds(act_max, w_absmax, fits):
    assert cpu.pair_sums_fit(act_max, w_absmax) == fits
    assert (2 * act_max * w_absmax <= torch.iinfo(torch.int16).max) == fits


def test_default_config_picks_weight_bits_by_cpu():
    auto = get_default_x86_inductor_quantization_config()
    w, act = auto.weight, auto.input_activation
    assert (w.quant_min, w.quant_max) == cpu.cpu_info().int8_weight_range and act.quant_max == 255
    assert cpu.fuses_exactly(act.quant_max, max(-w.quant_min, w.quant_max))  # exact on this CPU
    assert get_default_x86_inductor_quantization_config(reduce_range="auto") is auto
    # an explicit argument is always honored (8-bit weights)
    full = get_default_x86_inductor_quantization_config(reduce_range=False)
    assert (full.input_activation.quant_max, full.weight.quant_min, full.weight.quant_max) == (255, -128, 127)
    narrow = get_default_x86_inductor_quantization_config(reduce_range=True)
    assert (narrow.input_activation.quant_max, narrow.weight.quant_min, narrow.weight.quant_max) == (127, -128, 127)
    assert cpu.pair_sums_fit(127, 128)  # reduce_range=True is exact on every CPU
    for kw in ({"is_qat": True}, {"is_dynamic": True}):
        assert get_default_x86_inductor_quantization_config(**kw).weight.quant_min == w.quant_min
    with pytest.raises(ValueError, match="reduce_range"):
        get_default_x86_inductor_quantization_config(reduce_range="yes")
