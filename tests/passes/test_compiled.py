"""Layer c: each variant compiled with freezing; generated code, stats and numerics checked.

Matrix: every variant x {int8-fp32, int8-mixed-bf16} with the Python wrapper; a representative
subset x {int8-fp32, int8-mixed-bf16} with the C++ wrapper (its compiles are slower).
"""

import re
import pytest
import torch

from compile_utils import compile_and_run, float_compute_calls, onednn_calls, prepacks_at_runtime
from qdq_models import O_SCALE, QDQLayer, X_SCALE, X_ZP, q_dq
from variants import BY_ID, VARIANTS, left_fp32_for_saturation

import inductor_quant.passes as iq_passes
from inductor_quant.kernels import probe

ALL_ONEDNN = ("qconv_pointwise", "qconv2d_pointwise", "qlinear_pointwise")
CPP_SUBSET = ["qconv2d.relu.q", "qconv2d.add.relu", "qconv2d.add.dq.relu.q", "qconv1d", "qconv3d", "qconv2d.hardswish",
              "qlinear.3d.add", "qlinear.gelu.q", "qlinear.wpt", "qlinear.dynamic.3d.relu"]
DTYPES = {"fp32": False, "bf16": True}
# bf16 compiled in the default run for this subset (every bf16 variant is rewritten and checked
# without compiling in test_phases.py; the rest compile under -m slow)
BF16_SUBSET = {"qconv2d", "qconv2d.nobias", "qconv2d.wpt", "qconv1d", "qconv3d", "qconv2d.silu", "qconv2d.relu.q",
               "qconv2d.add.relu", "qconv2d.add.dq.relu.q", "qconv2d.s8.relu.q", "qlinear.2d", "qlinear.3d.nobias",
               "qlinear.m1", "qlinear.gelu.q", "qlinear.gelu_tanh", "qlinear.hardswish", "qlinear.dynamic",
               "qlinear.3d.add", "qlinear.3d.dropout.add", "qlinear.add.dq.q"}
PY_MATRIX = [pytest.param(v, d, id=f"{v.id}-{d}",
                          marks=[pytest.mark.slow] if d == "bf16" and v.id not in BF16_SUBSET else [])
             for v in VARIANTS for d in DTYPES]


def float_add_folds(v, bf16) -> bool:
    """A linear's float residual is folded as `add` (the residual is an input here, not
    writable in place); oneDNN builds a bf16 `add` only with AVX-512 (kernels/probe.py)."""
    return not (bf16 and not v.is_conv and v.binary and not v.binary.startswith("add_dq")
                and not probe.qlinear_binary_builds(torch.bfloat16, torch.bfloat16, "add"))


def expected_ids(v, bf16):
    """The variant's fusion ids; under bf16 each id's `.bf16` row (or the variant's own
    `bf16_fusions`, where a step computes in fp32)."""
    if not bf16:
        return list(v.fusions)
    if v.bf16_fusions:
        return list(v.bf16_fusions)
    out = []
    for fid in v.fusions:
        if fid.startswith("post.binary") and not float_add_folds(v, bf16):
            continue  # the add stays a generated kernel after the fused linear
        parts = fid.split(".")
        nobias = parts[-1] == "nobias" or (v.is_conv and not v.bias and parts[1] == "prepack")
        candidate = ".".join([p for p in parts if p != "nobias"] + ["bf16"] + (["nobias"] if nobias else []))
        out.append(candidate if candidate in iq_passes.fusion_ids() else fid)
    return out


def check(v, bf16, ref, out, code, stats):
    for op in ALL_ONEDNN:
        expected = dict(v.bf16_ops if bf16 and v.bf16_ops else v.ops).get(op, 0) if v.fuses_here else 0
        assert onednn_calls(code, op) == expected, f"{op}: expected {expected} calls\n{code}"
    assert not prepacks_at_runtime(code), f"weight prepack was not folded into a constant:\n{code}"
    if not v.fuses_here:  # exact fp32 fallback on a CPU without VNNI, reported
        assert left_fp32_for_saturation(stats), stats
    else:
        assert not float_compute_calls(code), f"quantized layer still runs in fp32:\n{code}"
        assert stats["unfused"] == []
        for fid in expected_ids(v, bf16):
            assert stats["fused"].get(fid, 0) == 1, (fid, stats)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if v.out_q:  # within one quantization step
        atol, rtol = O_SCALE * 1.01, 1e-3
    else:
        atol, rtol = (3e-2, 2e-2) if bf16 else (2e-3, 1e-3)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("variant, dtype", PY_MATRIX)
def test_python_wrapper(variant, dtype):
    model = QDQLayer(variant).eval()
    check(variant, DTYPES[dtype], *compile_and_run(model, model.example_inputs(DTYPES[dtype]), bf16=DTYPES[dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vid", CPP_SUBSET)
def test_cpp_wrapper(vid, dtype):
    variant = BY_ID[vid]
    model = QDQLayer(variant).eval()
    check(variant, DTYPES[dtype],
          *compile_and_run(model, model.example_inputs(DTYPES[dtype]), cpp_wrapper=True, bf16=DTYPES[dtype]))


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["py", "cpp"])
def test_int8_propagation_compiled(cpp_wrapper):
    from qdq_models import Int8Ops
    model = Int8Ops().eval()
    ref, out, code, stats = compile_and_run(model, Int8Ops.example_inputs(), cpp_wrapper=cpp_wrapper)
    assert all(stats["fused"].get(i) == 1 for i in ("int8.maxpool2d", "int8.cat", "int8.permute", "int8.reshape"))
    assert onednn_calls(code, "qlinear_pointwise") == 1 and not float_compute_calls(code)
    # no dispatcher fallback in the C++ wrapper but our own kernel layer's calls (kernels/native.py)
    assert all(op.startswith("iq_onednn::") for op in re.findall(r'aoti_torch_call_dispatcher\(\s*"([^"]+)"', code))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vid", ["qconv2d.relu.q", "qlinear.3d.add", "qlinear.m1", "qlinear.dynamic"])
def test_dynamic_batch(vid):
    """torch.compile(dynamic=True): packed without a fixed input shape; batch 1 included."""
    v = BY_ID[vid]
    model = QDQLayer(v).eval()
    torch._dynamo.reset()
    iq_passes.reset_stats()
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        for batch in (3, 1, 2):
            inputs = [t[:1].expand(batch, *t.shape[1:]).contiguous() + 0.01 * batch for t in model.example_inputs()]
            torch.testing.assert_close(compiled(*inputs).float(), model(*inputs).float(),
                                       atol=O_SCALE * 1.01 if v.out_q else 2e-3, rtol=1e-3)
    stats = iq_passes.stats()
    kind = "qconv" if v.is_conv else "qlinear"
    assert stats["unfused"] == [] and any(k.startswith(kind) for k in stats["fused"]), stats


class Residual(torch.nn.Module):
    """BERT's residual: r is computed in the graph (LayerNorm there) and feeds both the linear
    (through q/dq) and the add. `later_reader`: r is read again after the add (by an op that
    needs the sum, so no schedule can read r before the in-place write)."""

    def __init__(self, later_reader: bool):
        super().__init__()
        from variants import linear
        self.layer, self.later_reader = QDQLayer(linear("residual", x_shape=(6, 16), out_features=16)), later_reader
        self.register_buffer("m", torch.randn(16, 16, generator=torch.Generator().manual_seed(2)) / 4)

    def forward(self, x):
        r = x @ self.m  # an extern kernel's buffer (mm): later readers read it, cannot recompute it
        y = self.layer.tail(q_dq(r, X_SCALE, X_ZP)) + r
        return y * r if self.later_reader else y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("later_reader", [False, True], ids=["in_place", "later_reader"])
def test_linear_residual_sum_in_place_only_when_safe(later_reader, dtype):
    """The linear `sum` post-op overwrites its extra input (an undeclared write in Inductor's
    lowering): only when every other reader of it feeds the linear; else `add`, a new output."""
    model = Residual(later_reader).eval()
    ref, out, code, stats = compile_and_run(model, (torch.randn(6, 16),), bf16=DTYPES[dtype])
    assert stats["unfused"] == [] and onednn_calls(code, "qlinear_pointwise") == 1
    if later_reader and DTYPES[dtype] and not probe.qlinear_binary_builds(torch.bfloat16, torch.bfloat16, "add"):
        assert "'add', 1.0" not in code and "post.binary.add" not in stats["fused"], code
    elif later_reader:  # a new output: torch's op with `add`, or our kernel layer's (own_calls.py)
        ours = stats["kernels"].get("qlinear_add", 0)
        assert ("iq_onednn.qlinear_add" in code) if ours else ("'add', 1.0" in code), code
    else:  # in place: torch's op with `sum`, or our kernel layer's in-place call
        ours = stats["kernels"].get("qlinear_sum_", 0)
        assert ("iq_onednn.qlinear_sum_" in code) if ours else ("'sum', 1.0" in code), code
    tol = dict(atol=3e-2, rtol=2e-2) if DTYPES[dtype] else dict(atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
