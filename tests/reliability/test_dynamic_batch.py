"""A dynamic batch that includes 1 (issue 18, item 9): exported with Dim("batch", min=1, max=64),
the converted model serves batch 1 and batch 64, eager and compiled, through quantize() and the
manual export -> prepare_pt2e -> convert_pt2e flow; batches outside [1, 64] are refused with an
error naming the input, the range and the fix; re-export and save/load keep [1, 64].

torch narrows the placeholders' symbolic range to [2, 64] for tracing (sizes 0 and 1 are
specialized); the range the user exported is the module's `range_constraints`. The compiled
model is shared per flow (one compile at batch 2, one recompile at batch 1).
"""

import pytest
import torch
from torch import nn
from torch.export import Dim

import inductor_quant
from inductor_quant import prepare_pt2e
from inductor_quant.errors import InputMismatchError
from inductor_quant.export_utils import InputCheck
from inductor_quant.kernels import compat
from helpers import ConvLinear, compile_frozen, onednn_calls, ptq, quant_step, x86_quantizer

LO, HI = 1, 64
DYNAMIC_BATCH = ({0: Dim("batch", min=LO, max=HI)},)
SHAPE = (3, 8, 8)


def _out_of_range(bad: int) -> str:
    return (rf"input 'x' has shape \({bad}, 3, 8, 8\): dim 0 is outside the dynamic range \[{LO}, {HI}\]"
            r".*Fix: keep inputs inside the range, or re-export with a wider torch.export.Dim")


def _run_and_code(fn, *args):
    """Run and return the code Inductor generated meanwhile; unlike torch's run_and_get_code it does
    not reset Dynamo, so it shows what a *re*compile (batch 1 after batch 2) runs."""
    out, codes = compat.run_and_get_code(fn, *args)
    return out, "\n".join(codes or ())


@pytest.fixture(scope="module", params=["quantize", "manual"])
def served(request, our_passes_only):
    """One converted model per flow, and its compile at batch 2 (dynamic, fullgraph, frozen)."""
    torch.manual_seed(0)
    model, x = ConvLinear().eval(), torch.randn(2, *SHAPE)
    calibration = [(x,), (torch.randn(2, *SHAPE),)]
    if request.param == "quantize":
        q = inductor_quant.quantize(model, (x,), calibration, dynamic_shapes=DYNAMIC_BATCH)
    else:
        q = ptq(model, (x,), calibration, dynamic_shapes=DYNAMIC_BATCH)
    compiled, out, code = compile_frozen(q, x, dynamic=True, fullgraph=True)
    assert onednn_calls(code, "qconv_pointwise") == 1 and onednn_calls(code, "qlinear_pointwise") == 1
    return q, compiled, x, out


def test_checked_range_is_the_exported_one():
    """The input check's range per Dim is torch's `range_constraints`, not the narrowed [2, ...]."""
    for dim, want in ((Dim("b", min=1, max=64), (1, 64)), (Dim("b", min=2, max=8), (2, 8)),
                      (Dim("b", max=16), None)):
        ep = torch.export.export(nn.Linear(8, 4), (torch.randn(4, 8),), dynamic_shapes=({0: dim},))
        recorded = next(iter(ep.range_constraints.values()))
        exported = (int(recorded.lower), int(recorded.upper))
        assert want is None or exported == want  # torch's own record (Dim's default min may vary)
        prepared = prepare_pt2e(ep.module(), x86_quantizer())
        check = next(h for h in prepared._forward_pre_hooks.values() if isinstance(h, InputCheck))
        assert check.specs[0][3] == [exported, 8]


def test_batch_1_and_64_run_eagerly(served):
    q, _, _, _ = served
    torch.manual_seed(1)
    big = torch.randn(HI, *SHAPE)
    with torch.no_grad():
        out_big, out_one = q(big), q(big[:1])
    assert out_big.shape == (HI, 4) and out_one.shape == (1, 4)
    torch.testing.assert_close(out_one, out_big[:1], rtol=0, atol=quant_step(q))  # per-sample result


def test_batch_1_and_64_run_compiled(served):
    q, compiled, x, out = served
    torch.manual_seed(2)
    one, big = torch.randn(1, *SHAPE), torch.randn(HI, *SHAPE)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        out_one, code_one = _run_and_code(compiled, one)  # 0/1 specialization: a recompile
        out_big = compiled(big)
        torch.testing.assert_close(out, q(x), rtol=0, atol=quant_step(q))
        torch.testing.assert_close(out_one, q(one), rtol=0, atol=quant_step(q))
        torch.testing.assert_close(out_big, q(big), rtol=0, atol=quant_step(q))
    assert out_one.shape == (1, 4) and out_big.shape == (HI, 4)
    # the batch-1 graph runs the fused int8 kernels too, not a float fallback
    assert onednn_calls(code_one, "qconv_pointwise") == 1 and onednn_calls(code_one, "qlinear_pointwise") == 1


@pytest.mark.parametrize("bad", [HI + 1, 0])
def test_batch_outside_the_exported_range_is_refused(served, bad):
    q, compiled, x, out = served
    wrong = torch.randn(bad, *SHAPE)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        with pytest.raises(InputMismatchError, match=_out_of_range(bad)):
            q(wrong)
        # fullgraph=True: our error arrives inside Dynamo's Unsupported("Observed exception")
        with pytest.raises((InputMismatchError, torch._dynamo.exc.Unsupported),
                           match=rf"(?s)InputMismatchError.*outside the dynamic range \[{LO}, {HI}\].*Fix"
                           rf"|^input 'x' has shape \(\d+, 3, 8, 8\): dim 0 is outside the dynamic range \[{LO}, {HI}\]"):
            compiled(wrong)
        torch.testing.assert_close(compiled(x), out, rtol=0, atol=0)  # still serving


def test_reexport_save_load_keeps_the_exported_range(served, tmp_path):
    q, _, x, _ = served
    ep = torch.export.export(q, (x,), dynamic_shapes=DYNAMIC_BATCH)
    path = tmp_path / "q.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    for program in (ep, loaded):
        assert [(int(r.lower), int(r.upper)) for r in program.range_constraints.values()] == [(LO, HI)]
    served_model = loaded.module()
    torch.manual_seed(3)
    with torch.no_grad():
        for n in (1, HI):
            xn = torch.randn(n, *SHAPE)
            torch.testing.assert_close(served_model(xn), q(xn), rtol=0, atol=0)
        with pytest.raises(Exception, match=str(HI)):  # torch's own guard on the loaded module
            served_model(torch.randn(HI + 1, *SHAPE))
