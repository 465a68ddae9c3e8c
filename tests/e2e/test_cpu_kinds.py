"""Every x86 CPU kind: the compiled model computes what the eager converted model computes.

Each check runs in a child process (tests/e2e/saturation_check.py) three times: as this machine
is, with `ONEDNN_MAX_CPU_ISA=AVX2`, which makes oneDNN dispatch its pre-VNNI kernels on any CPU,
and capped at `AVX512_CORE_VNNI` (a cap never adds what the CPU lacks: on an AVX2 machine all
three runs are alike). The expectations follow the CPU facts the child reports,
and the child's kernel probe shows the saturation is real where VNNI is missing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inductor_quant.benchmarks.accuracy import fashion_mnist as fm

SCRIPT = Path(__file__).with_name("saturation_check.py")
CASES = ["conv:8bit", "linear:8bit", "conv:auto", "linear:auto", "conv:7bit"]
if (fm.DATA_DIR / "t10k-images-idx3-ubyte.gz").exists():  # CI installs it (test_accuracy_fashion_mnist)
    CASES += ["fashion:8bit", "fashion:auto"]
KINDS = {"this-cpu": None, "avx2": "AVX2", "avx512-vnni": "AVX512_CORE_VNNI"}  # Cascade Lake: VNNI, no bf16


def _run(cap):
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    proc = subprocess.run([sys.executable, str(SCRIPT), *CASES], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def kind(request):
    return request.param, _run(KINDS[request.param])


def test_cpu_facts_describe_what_onednn_runs(kind):
    name, out = kind
    assert out["cpu"]["vnni"] == (not out["saturates"])  # the facts agree with the kernel itself
    if name == "avx2":
        assert out["saturates"] and not out["cpu"]["vnni"] and out["cpu"]["onednn_cap"] == "AVX2"
        assert "no VNNI: int8 weights use 7 bits" in out["cpu"]["summary"]


@pytest.mark.parametrize("case", CASES)
def test_compiled_matches_eager_within_one_step(kind, case):
    _, out = kind
    r = out["cases"][case]
    assert r["max_diff"] <= r["step"], r
    assert r["top1_compiled_vs_eager"] >= 0.998, r
    assert r["sqnr_compiled_vs_eager"] >= 45, r


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith(":8bit")])
def test_default_and_reduced_range_fuse_every_layer_on_every_kind(kind, case):
    _, out = kind
    r = out["cases"][case]
    if case.endswith(":auto"):  # 7-bit weights without VNNI, 8-bit activations everywhere
        assert r["weight_range"] == ([-128, 127] if out["cpu"]["vnni"] else [-64, 63]) and r["act_quant_max"] == 255
    else:  # reduce_range=True: 7-bit activations, 8-bit weights
        assert r["weight_range"] == [-128, 127] and r["act_quant_max"] == 127
    assert r["onednn_int8_calls"] >= 1 and r["unfused"] == [], r
    assert r["warnings"] == []
    assert r["sqnr_compiled_vs_fp32"] >= 30, r


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith(":8bit")])
def test_8bit_model_fuses_only_where_the_kernel_is_exact(kind, case):
    """With VNNI an 8-bit model fuses; without it every layer stays fp32, reported with the reason."""
    _, out = kind
    r = out["cases"][case]
    if out["cpu"]["vnni"]:
        assert r["onednn_int8_calls"] >= 1 and r["unfused"] == [], r
    else:
        assert r["onednn_int8_calls"] == 0, r
        assert not r["weight_dequant_per_call"], r  # the fp32 fallback's weight is a frozen fp32 constant
        assert r["unfused"] and all(code == "saturation" for *_, code in r["unfused"]), r


def test_one_warning_with_the_fix(kind):
    _, out = kind
    warned = [w for c in CASES for w in out["cases"][c]["warnings"]]
    if out["cpu"]["vnni"]:
        assert warned == []
    else:  # once per process, naming the fix
        assert len(warned) == 1 and "get_default_x86_inductor_quantization_config()" in warned[0], warned
