"""Layer c: each variant compiled with freezing; generated code, stats and numerics checked."""

import pytest
import torch

from compile_utils import FP32_COMPUTE, PREPACK_AT_RUNTIME, compile_and_run, onednn_calls
from qdq_models import O_SCALE, QDQLayer
from variants import BY_ID, VARIANTS

ALL_ONEDNN = ("qconv_pointwise", "qconv2d_pointwise", "qlinear_pointwise")


def check(v, ref, out, code, stats, atol_fp=2e-3):
    for op in ALL_ONEDNN:
        expected = dict(v.ops).get(op, 0)
        assert onednn_calls(code, op) == expected, f"{op}: expected {expected} calls\n{code}"
    assert not FP32_COMPUTE.search(code), f"quantized layer still runs in fp32:\n{code}"
    assert not PREPACK_AT_RUNTIME.search(code), f"weight prepack was not folded into a constant:\n{code}"
    assert stats["unfused"] == []
    for fid in v.fusions:
        assert stats["fused"].get(fid, 0) == 1, (fid, stats)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    atol = O_SCALE * 1.01 if v.out_q else atol_fp  # within one quantization step
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_variant_python_wrapper(variant):
    model = QDQLayer(variant).eval()
    check(variant, *compile_and_run(model, model.example_inputs()))
