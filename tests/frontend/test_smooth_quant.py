"""smooth_quant (inductor_quant/smooth_quant.py): an identity on the float model; with activation
outlier channels it makes per-token dynamic int8 much closer to float; the 1/s folds into a
LayerNorm read only by the smoothed linears (else one multiply before them); and the compiled
smoothed model runs int8 linears and matches its eager converted self."""

import pytest
import torch
from torch import nn

from inductor_quant import convert_pt2e, prepare_pt2e, smooth_quant
from inductor_quant.numerics import Agreement
from inductor_quant.quantizer import X86InductorQuantizer, get_x86_inductor_linear_dynamic_per_token_config

aten = torch.ops.aten


class Block(nn.Module):
    """LayerNorm -> Q/K/V-like siblings (one input), then an MLP whose second linear reads a GELU."""

    def __init__(self, d=64):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.norm(x)
        h = self.q(h) + self.k(h) * self.v(h)
        return self.down(torch.nn.functional.gelu(self.up(h)))


def _outliers(batch=4, seq=8, d=64, seed=0):
    """Activations with a few channels 50x the rest, as LLM hidden states have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, d, generator=g)
    x[..., :3] *= 50
    return x


def _model():
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():  # outlier channels the weights barely read, as in trained LLMs
        model.norm.weight[:3] = 40
        for lin in (model.q, model.k, model.v):
            lin.weight[:, :3] *= 0.02
    return model


def _exported(model, x):
    return torch.export.export(model, (x,)).module()


def _per_token(gm, calibration):
    quantizer = X86InductorQuantizer().set_module_type_qconfig(nn.Linear,
                                                               get_x86_inductor_linear_dynamic_per_token_config())
    prepared = prepare_pt2e(gm, quantizer)
    for x in calibration:
        prepared(x)
    return convert_pt2e(prepared)


def test_smoothing_is_an_identity_in_float():
    model, x = _model(), _outliers()
    smoothed = smooth_quant(_exported(model, x), [_outliers(seed=s) for s in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)


def test_the_layer_norm_takes_the_inverse_scales_and_other_inputs_a_multiply():
    model, x = _model(), _outliers()
    gm = smooth_quant(_exported(model, x), [x])
    muls = [n for n in gm.graph.nodes if n.target is aten.mul.Tensor and "smooth_quant" in str(n.args[1])]
    assert sorted(str(n.args[0].target) for n in muls) == ["aten.add.Tensor", "aten.gelu.default"], gm.graph
    norm = next(n for n in gm.graph.nodes if n.target is aten.layer_norm.default)
    assert "smoothed" in norm.args[2].target and "smoothed" in norm.args[3].target
    # one s for the three siblings: they still read one value
    assert len({n.args[0] for n in gm.graph.nodes if n.target is aten.linear.default
                and n.args[0].target is aten.layer_norm.default}) == 1


def test_per_token_int8_is_closer_to_float_after_smoothing():
    model, calibration, x = _model(), [_outliers(seed=s) for s in range(3)], _outliers(seed=9)
    with torch.no_grad():
        ref = model(x)
        plain = Agreement().add(ref, _per_token(_exported(model, x), calibration)(x)).sqnr
        smoothed = Agreement().add(ref, _per_token(smooth_quant(_exported(model, x), calibration), calibration)(x)).sqnr
    assert smoothed > plain + 15, (plain, smoothed)  # dB (about 12 -> 39 here)


def test_bad_input_is_a_clear_error():
    model, x = _model(), _outliers()
    with pytest.raises(ValueError, match="alpha"):
        smooth_quant(_exported(model, x), [x], alpha=1.5)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        smooth_quant(_exported(model, x), [])


def test_the_compiled_smoothed_model_runs_int8_linears_and_matches_its_eager_self(our_passes_only):
    from torch._inductor.utils import run_and_get_code

    import inductor_quant.passes as iq_passes
    from inductor_quant.generated_code import float_compute_calls, onednn_int8_calls

    model, calibration, x = _model(), [_outliers(seed=s) for s in range(2)], _outliers(seed=9)
    converted = _per_token(smooth_quant(_exported(model, x), calibration), calibration)
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        ref = converted(x)
        out, codes = run_and_get_code(torch.compile(converted), x)
    code = "\n".join(codes)
    assert sum(onednn_int8_calls(code).values()) >= 3 and not float_compute_calls(code), code  # q/k/v merge
    assert iq_passes.stats()["unfused"] == []
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_quantize_smooths_first_when_asked():
    """quantize(..., smooth=alpha): SmoothQuant on the exported model, then the usual flow; the
    calibration batches are read twice, so a generator works too."""
    from inductor_quant import quantize

    model, x = _model(), _outliers(seed=9)
    quantizer = X86InductorQuantizer().set_module_type_qconfig(nn.Linear,
                                                               get_x86_inductor_linear_dynamic_per_token_config())
    converted = quantize(model, (x,), (_outliers(seed=s) for s in range(3)), quantizer=quantizer, smooth=0.5)
    assert any("smoothed" in str(n.target) for n in converted.graph.nodes if n.op == "get_attr")
    with torch.no_grad():
        assert Agreement().add(model(x), converted(x)).sqnr > 30
