"""GPTQ (`inductor_quant.gptq.gptq`, `quantize(..., gptq=True)`): 4-bit group-wise weights rounded
so that the layer's output stays close to float. On inputs whose channels are correlated (as a
real layer's are) its output error is well below round-to-nearest's on the same grid; convert
stores exactly the integers it chose; its grid is the config's (float or integer zero points,
symmetric); int8 and too-little-calibrated linears are left as they were; the compile runs it as
any int4 model."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run

from inductor_quant import convert_pt2e, prepare_pt2e, quantize
from inductor_quant.generated_code import float_compute_calls, weight_only_int4_calls
from inductor_quant.gptq import FITTED, gptq
from inductor_quant.quantizer import (X86InductorQuantizer, get_x86_inductor_linear_weight_only_int4_config,
                                      get_x86_inductor_linear_weight_only_int8_config)

dq_per_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default
FLOAT_ZP = dict(zero_point_domain="float")


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(64, 96), nn.Linear(96, 32, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


MIXING = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))


def _inputs(rows, seed):
    """Rows whose 64 channels are mixed from 8 sources (one mixing for all): a covariance far from
    identity, as a real layer's inputs have (what GPTQ uses)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 8, generator=g) @ MIXING + 0.05 * torch.randn(rows, 64, generator=g)


def _quantizer(config):
    return X86InductorQuantizer().set_module_type_qconfig(nn.Linear, config)


def _model():
    torch.manual_seed(0)
    return TwoLinears().eval()


def _converted(config, calibration, fit):
    model = _model()
    return model, quantize(model, calibration[0], calibration, quantizer=_quantizer(config), gptq=fit)


CALIBRATION = [(_inputs(64, seed),) for seed in range(4)]  # 256 rows >= 96 inputs of `down`


@pytest.mark.parametrize("config", [FLOAT_ZP, dict(symmetric=False), dict()], ids=["float-zp", "int-zp", "symmetric"])
def test_the_output_error_is_well_below_round_to_nearest(config):
    int4 = get_x86_inductor_linear_weight_only_int4_config(32, **config)
    model, rounded = _converted(int4, CALIBRATION, fit=False)
    _, fitted = _converted(int4, CALIBRATION, fit=True)
    held_out = [_inputs(64, 90 + i) for i in range(8)]  # the same distribution

    def error(m):
        with torch.no_grad():
            return sum((m(x) - model(x)).square().mean().item() for x in held_out)

    err_rtn, err_gptq = error(rounded), error(fitted)
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)


def test_convert_stores_the_integers_gptq_chose_on_its_grid():
    """The fitted weight is on its groups' grid, and convert's int8 constant times the scales gives
    it back exactly; zero points are the config's (float, within the 4-bit range)."""
    int4 = get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP)
    prepared = prepare_pt2e(torch.export.export(_model(), CALIBRATION[0]).module(), _quantizer(int4))
    outcome = gptq(prepared, CALIBRATION)
    assert sorted(outcome.values()) == [FITTED, FITTED], outcome
    weights = {n.args[0].target: getattr(prepared, n.args[0].target)
               for n in prepared.graph.nodes if n.op == "call_module" and n.args and getattr(n.args[0], "op", "") == "get_attr"}
    assert all(name.endswith("_gptq") for name in weights), weights

    converted = convert_pt2e(prepared)
    dqs = [n for n in converted.graph.nodes if n.target is dq_per_channel]
    assert len(dqs) == 2
    for dq, fitted in zip(dqs, weights.values()):
        q, scale, zp = (getattr(converted, a.target) for a in dq.args[:3])
        assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7
        assert bool((zp != zp.round()).any()) and zp.min() >= -8 and zp.max() <= 7
        back = ((q.float() - zp[:, None]) * scale[:, None]).reshape(fitted.shape)
        torch.testing.assert_close(back, fitted, rtol=0, atol=1e-6 * fitted.abs().max().item())


def test_int8_weights_and_too_few_rows_are_left_alone():
    """`up` (64 inputs) is int8 group-wise: not a GPTQ target. `down` (96 inputs) is int4 but
    sees 64 calibration rows: kept round-to-nearest, said why; convert gives what it gives without GPTQ."""
    model = _model()
    quantizer = (X86InductorQuantizer()
                 .set_module_name_qconfig("up", get_x86_inductor_linear_weight_only_int8_config(group_size=32))
                 .set_module_name_qconfig("down", get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP)))
    few = CALIBRATION[:1]
    prepared = prepare_pt2e(torch.export.export(model, few[0]).module(), quantizer)
    outcome = gptq(prepared, few)
    assert list(outcome.values()) == ["kept round-to-nearest: 64 calibration rows for 96 inputs (GPTQ needs at least "
                                      "as many)"], outcome
    fitted = quantize(model, few[0], few, quantizer=quantizer, gptq=True)
    rounded = quantize(model, few[0], few, quantizer=quantizer)
    x = _inputs(64, 5)
    with torch.no_grad():
        assert torch.equal(fitted(x), rounded(x))


def test_a_weight_read_elsewhere_is_kept():
    """A tied weight (an embedding and a linear on one tensor): the linear gets a new fitted
    weight, the embedding still reads the original."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(96, 64)
            self.head = nn.Linear(64, 96, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids, x):
            return self.emb(ids).sum(1), self.head(x)

    torch.manual_seed(0)
    model = Tied().eval()
    calibration = [(torch.randint(0, 96, (64, 3)), x) for (x,) in CALIBRATION]
    int4 = get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP)
    prepared = prepare_pt2e(torch.export.export(model, calibration[0]).module(), _quantizer(int4))
    assert list(gptq(prepared, calibration).values()) == [FITTED]
    converted = convert_pt2e(prepared)
    ids, x = torch.randint(0, 96, (64, 3)), _inputs(64, 5)
    with torch.no_grad():
        torch.testing.assert_close(converted(ids, x)[0], model(ids, x)[0], rtol=0, atol=0)


def test_a_linear_on_picked_rows_is_fitted_on_all_of_them():
    """A decoder's LM head reads the last token's row: 8 rows a batch here, 32 in all, fewer than
    its 64 inputs; its second moments come from all 16 tokens' rows (512) of the tensor it picks from."""

    class LastToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(64, 96, bias=False)

        def forward(self, x):
            return self.head(x[:, -1])

    calibration = [(_inputs(128, seed).reshape(8, 16, 64),) for seed in range(4)]
    int4 = get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP)
    torch.manual_seed(0)
    converted = quantize(LastToken().eval(), calibration[0], calibration, quantizer=_quantizer(int4), gptq=True)
    assert list(converted.meta["gptq"].values()) == [FITTED], converted.meta["gptq"]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_compile_runs_it_as_int4(bf16):
    _, fitted = _converted(get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP), CALIBRATION, fit=True)
    ref, out, code, stats = compile_and_run(fitted, (_inputs(64, 7),), bf16=bf16)
    assert weight_only_int4_calls(code) == 2 and not float_compute_calls(code), code
    assert stats["unfused"] == [], stats
    tol = 1e-5 if not bf16 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


def test_no_calibration_is_a_clear_error():
    int4 = get_x86_inductor_linear_weight_only_int4_config(32, **FLOAT_ZP)
    prepared = prepare_pt2e(torch.export.export(_model(), CALIBRATION[0]).module(), _quantizer(int4))
    with pytest.raises(ValueError, match="no batches"):
        gptq(prepared, [])
