"""The fusion report, the CLI around it, and inductor_quant.testing — as users call them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.report import fp32_compute_calls, fusion_report, onednn_op_calls
from inductor_quant.testing import UPDATE_ENV, assert_fused, assert_fusion_snapshot

from . import models

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def small_report():
    model, inputs = models.small_cnn()
    return fusion_report(model, inputs)  # installs our passes, which switches torch's built-ins off


def test_generated_code_parsing():
    code = (
        "buf1 = torch.ops.onednn.qconv_pointwise.tensor(buf0, x_scale)\n"
        "torch.ops.onednn.qconv2d_pointwise.binary_tensor(buf3)\n"
        "buf9 = torch.ops.onednn.qlinear_pointwise.default(buf8)\n"
        "w = torch.ops.onednn.qconv_prepack.default(w)\n"
        "extern_kernels.convolution(buf2, w)\nextern_kernels.mm(a, b, out=c)\n"
        "aoti_torch_cpu__qlinear_pointwise_tensor(h1, h2);\n"
    )
    assert onednn_op_calls(code) == {"qconv_pointwise": 1, "qconv2d_pointwise": 1, "qlinear_pointwise": 2}
    assert fp32_compute_calls(code) == {"convolution": 1, "mm": 1}


@pytest.mark.parametrize("line, op", [
    ("aoti_torch__convolution(buf0, w, bias, ...);", "convolution"),  # the C++ wrapper's ATen fallback
    ("aoti_torch_cpu_convolution(buf0, w);", "convolution"),
    ("aoti_torch_cpu_mkldnn__convolution_pointwise(buf0);", "_convolution_pointwise"),
    ("aoti_torch_cpu_addmm_out(buf1, b, x, w, 1, 1);", "addmm_out"),
    ("buf2 = torch.ops.mkldnn._linear_pointwise.default(x, w)", "_linear_pointwise"),
])
def test_strict_catches_every_float_compute_form(line, op):
    """`report --strict`, inductor_quant.testing and the test suites share one detector
    (inductor_quant/generated_code.py): a form one of them misses, all miss."""
    from inductor_quant.report import FusionReport

    assert fp32_compute_calls(line) == {op: 1}
    report = FusionReport(present={"conv": 1}, annotated={"conv": 1},
                          onednn_ops=dict(onednn_op_calls(line)), fp32_ops=dict(fp32_compute_calls(line)))
    assert report.strict_failures()  # one quantized layer, no oneDNN int8 call


def test_report_keeps_the_users_compiled_models():
    """fusion_report compiles its own copy: a model the user compiled before is not recompiled."""
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    user_model = torch.compile(torch.nn.Linear(4, 4), backend=counting_backend)
    x = torch.randn(2, 4)
    user_model(x)
    assert len(compiles) == 1
    model, inputs = models.small_cnn()
    fusion_report(model, inputs)
    user_model(x)
    assert len(compiles) == 1  # still the compiled entry from before the report


def test_report_leaves_the_users_stats_and_installation_as_they_were():
    """A report compiles with our passes installed and counts into stats of its own: afterwards
    the user's stats() and whether our passes are installed are what they were."""
    import importlib

    import inductor_quant.passes as iq_passes
    stats_module = importlib.import_module("inductor_quant.passes.stats")  # (passes.stats is the function)

    was_installed = iq_passes.is_installed()
    iq_passes.uninstall()
    try:
        slot = torch._inductor.config.joint_custom_pre_pass
        iq_passes.reset_stats()
        stats_module.count("qlinear.prepack.2d")  # the user's own count, from an earlier compile
        before = iq_passes.stats()
        model, inputs = models.small_cnn()
        report = fusion_report(model, inputs)
        assert report.fused.get("qconv.prepack") == 2  # the report saw its own compile
        assert iq_passes.stats() == before and not iq_passes.is_installed()
        assert torch._inductor.config.joint_custom_pre_pass is slot
    finally:
        if was_installed:
            iq_passes.install()


def test_strict_report_counts_merged_sibling_linears_as_fused():
    """Q, K and V merged into one GEMM are three fused layers in one oneDNN call: --strict passes."""
    from inductor_quant.benchmarks import zoo

    model, inputs = zoo.build("bert_tiny", 1)
    report = fusion_report(model, inputs)
    assert report.fused.get("merge.sibling_linears") == 2 and report.fused.get("merge.sibling_linears.absorbed") == 4
    assert report.annotated["linear"] == 12 and report.int8_layers == 8 and report.strict_failures() == [], report.text()


def test_report_counts_every_quantized_layer(small_report):
    assert small_report.annotated == {"conv": 2, "linear": 1}
    assert small_report.onednn_ops == {"qconv_pointwise": 2, "qlinear_pointwise": 1}
    assert small_report.fp32_ops == {}
    assert small_report.strict_failures() == []
    assert "qconv_pointwise x2" in small_report.text()


def test_assert_fused_passes_and_fails_readably(small_report, monkeypatch):
    import inductor_quant.testing as T

    monkeypatch.setattr(T, "fusion_report", lambda *a, **k: small_report)
    assert assert_fused(None, (), qconv=2, qlinear=1) is small_report
    with pytest.raises(AssertionError, match="expected 3 oneDNN int8 conv calls, generated code has 2"):
        assert_fused(None, (), qconv=3)


def test_fusion_snapshot_missing_changed_and_updated(small_report, tmp_path, monkeypatch):
    golden = tmp_path / "small.fusion.txt"
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    with pytest.raises(AssertionError, match="no fusion snapshot"):
        assert_fusion_snapshot(small_report, golden)
    monkeypatch.setenv(UPDATE_ENV, "1")
    assert_fusion_snapshot(small_report, golden)
    monkeypatch.delenv(UPDATE_ENV)
    assert_fusion_snapshot(small_report, golden)
    golden.write_text(golden.read_text().replace("qconv_pointwise: 2", "qconv_pointwise: 3"))
    with pytest.raises(AssertionError, match=r"(?s)-onednn.qconv_pointwise: 3.*\+onednn.qconv_pointwise: 2"):
        assert_fusion_snapshot(small_report, golden)


def _cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "inductor_quant", "--quiet", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_report_strict_fails_on_an_unfusable_quantized_layer():
    proc = _cli("report", "tests.cli.models:unfusable_cnn", "--strict")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "strict: quantized layers that did not fuse" in proc.stderr
    assert "UNFUSED conv" in proc.stdout


def test_report_json_for_a_fusable_model():
    proc = _cli("report", "tests.cli.models:small_cnn", "--strict", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["onednn_ops"] == {"qconv_pointwise": 2, "qlinear_pointwise": 1}
    assert data["strict_failures"] == []


def test_bench_quick_smoke(tmp_path):
    """`bench --quick` as CI runs it: every mode builds and is timed; no timing assertions. On the
    quick zoo's transformer only (the demo test runs the convnet through the default modes)."""
    proc = _cli("bench", "--quick", "--models", "bert_tiny", "--out", str(tmp_path / "bench"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"bert_tiny"}
    bf16_modes = {"int8_bf16", "inductor_bf16"}  # run by default only where bf16 is native
    ran = {r["mode"] for r in rows}
    assert {"int8", "int8_cpp", "inductor_fp32"} <= ran and (bf16_modes <= ran) == cpu_info().bf16_native, ran
    assert proc.stdout.startswith(f"CPU: {cpu_info().summary()}"), proc.stdout
    assert all(r["machine"]["cpu_summary"] == cpu_info().summary() for r in rows)
    for r in rows:
        skipped = (r["error"] or "").startswith("skipped")
        assert skipped or (r["error"] is None and r["median_ms"] > 0), r
        if r["mode"] in ("int8", "int8_bf16", "int8_cpp", "int8_dynamic") and not skipped:
            assert r["fused"] and not [u for u in r["unfused"] if u[0] in ("conv", "linear")], r
            assert r["cosine"] > 0.98, r
    assert "| bert_tiny | 2 |" in (tmp_path / "bench.md").read_text()


def test_demo_prints_fusion_speed_and_accuracy():
    """The main job's three sections, on a tiny zoo model (the default is ResNet-50)."""
    # caches off: int8_fast autotunes its linear here, as on a fresh machine (prints tables unless quieted)
    proc = _cli("demo", "--model", "resnet_tiny", "--batch", "2", "--runs", "2",
                env={"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"CPU: {cpu_info().summary()}" in out
    assert "qconv.prepack                      17" in out and "quantized conv/linear left unfused: 0" in out
    assert "| resnet_tiny | 2 |" in out and "int8_fast" in out.split("== Speed")[1]
    accuracy = out.split("== Accuracy")[1]
    assert "int8" in accuracy and "cosine 0.99" in accuracy
    # the output is for a person: no autotune tables, no other library's warnings
    assert "AUTOTUNE" not in proc.stderr and "Autotune Choices" not in proc.stderr, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]


def test_demo_quiets_libraries_but_not_our_warnings():
    import warnings

    from inductor_quant import demo

    config = torch._inductor.config
    before = (config.autotune_num_choices_displayed, config.max_autotune_report_choices_stats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with demo.quiet_compiles():
            assert (config.autotune_num_choices_displayed, config.max_autotune_report_choices_stats) == (0, False)
            warnings.warn("TypedStorage is deprecated", UserWarning)
            warnings.warn("inductor_quant: enable freezing", UserWarning)
        warnings.warn("a library warning after the demo's compiles", UserWarning)
    assert [str(w.message) for w in caught] == ["inductor_quant: enable freezing",
                                               "a library warning after the demo's compiles"]
    assert (config.autotune_num_choices_displayed, config.max_autotune_report_choices_stats) == before


def test_demo_on_a_cpu_without_vnni_or_native_bf16():
    """As on an AVX2 machine (oneDNN capped): the CPU line says so, no bf16 row, every layer fused."""
    proc = _cli("demo", "--model", "resnet_tiny", "--batch", "2", "--runs", "2", env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "AVX2, no VNNI: int8 weights use 7 bits" in out and "bf16 emulated" in out, out
    assert "skipped inductor_bf16: bf16 is emulated" in out and "inductor_bf16" not in out.split("== Speed")[1], out
    assert "quantized conv/linear left unfused: 0" in out
