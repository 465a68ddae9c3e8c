"""Helpers for users' compiler regression tests: fail loudly when a torch upgrade stops a fusion.

    from inductor_quant.testing import assert_fused, assert_fusion_snapshot

    def test_my_model_stays_int8():
        report = assert_fused(model, example_inputs, qconv=53, qlinear=1)
        assert_fusion_snapshot(report, "tests/golden/my_model.fusion.txt")

A snapshot is a small text file (layer counts, oneDNN calls, what stayed unfused); a mismatch
fails with a unified diff. Run with INDUCTOR_QUANT_UPDATE_SNAPSHOTS=1 to (re)write the files.
For inline snapshots use expecttest: `self.assertExpectedInline(report.snapshot(), "...")`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Optional

from .report import FusionReport, fusion_report

__all__ = ["assert_fused", "assert_fusion_snapshot", "UPDATE_ENV"]

UPDATE_ENV = "INDUCTOR_QUANT_UPDATE_SNAPSHOTS"


def assert_fused(model, example_inputs: tuple, qconv: Optional[int] = None, qlinear: Optional[int] = None,
                 *, calibration=None, quantizer=None, converted=None, cpp_wrapper: bool = False,
                 bf16: bool = False, allow_unfused: bool = False) -> FusionReport:
    """Compile the quantized model and check the generated code calls oneDNN int8 conv/linear
    exactly `qconv` / `qlinear` times (None: don't check) and, unless `allow_unfused`, that every
    quantized conv/linear fused. Returns the report for further checks."""
    report = fusion_report(model, example_inputs, calibration=calibration, quantizer=quantizer,
                           converted=converted, cpp_wrapper=cpp_wrapper, bf16=bf16)
    conv_calls = sum(n for op, n in report.onednn_ops.items() if op.startswith("qconv"))
    linear_calls = sum(n for op, n in report.onednn_ops.items() if op.startswith("qlinear"))
    problems = []
    if qconv is not None and conv_calls != qconv:
        problems.append(f"expected {qconv} oneDNN int8 conv calls, generated code has {conv_calls}")
    if qlinear is not None and linear_calls != qlinear:
        problems.append(f"expected {qlinear} oneDNN int8 linear calls, generated code has {linear_calls}")
    if not allow_unfused:
        problems += report.strict_failures()
    if problems:
        raise AssertionError("fusion check failed:\n  " + "\n  ".join(problems) + "\n\n" + report.text())
    return report


def assert_fusion_snapshot(report: FusionReport, path: str | os.PathLike) -> None:
    """Compare `report.snapshot()` with the golden file at `path`; INDUCTOR_QUANT_UPDATE_SNAPSHOTS=1
    (re)writes it. A missing file fails, so a CI run never passes on a snapshot nobody wrote."""
    path = Path(path)
    actual = report.snapshot()
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        raise AssertionError(f"no fusion snapshot at {path}; run once with {UPDATE_ENV}=1 to write it:\n{actual}")
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                             fromfile=f"{path} (expected)", tofile="generated now"))
        raise AssertionError(f"fusion snapshot changed ({UPDATE_ENV}=1 to accept):\n{diff}")
