"""skip_sensitive: the layer that breaks the model is skipped, the target is met, the config reused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.numerics import compare
from inductor_quant.sensitivity import SensitivityResult, skip_sensitive
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

from flow_helpers import sqnr
from test_numerics import MLP


class ScaleTimes50Observer(PerChannelMinMaxObserver):
    """A broken weight observer: every scale 50x too large (weights collapse to a few levels)."""

    def calculate_qparams(self):
        scale, zero_point = super().calculate_qparams()
        return scale * 50, zero_point


def broken_quantizer(layer: str = "fc2"):
    """Default X86 config, except `layer`'s weight observer is ScaleTimes50Observer."""
    config = get_default_x86_inductor_quantization_config()
    bad_weight = dataclasses.replace(config.weight, observer_or_fake_quant_ctr=ScaleTimes50Observer.with_args(eps=2**-12))
    quantizer = X86InductorQuantizer().set_global(config)
    return quantizer.set_module_name_qconfig(layer, dataclasses.replace(config, weight=bad_weight))


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = MLP().eval()
    return model, [torch.randn(16, 32) for _ in range(4)]


def test_broken_layer_is_ranked_first_and_skipping_it_restores_the_target(case):
    model, batches = case
    result = skip_sensitive(model, (batches[0],), batches, target=25.0, quantizer_factory=broken_quantizer)
    assert isinstance(result, SensitivityResult)
    assert result.skipped == ["fc2"] and result.target_met
    first_score = result.history[0][1]
    assert first_score < 25.0 <= result.score, result.history  # broken before, fixed after one skip
    # the score is the real end-to-end SQNR of the returned model
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches])
        out = torch.cat([result.model(b) for b in batches])
    assert sqnr(ref, out) == pytest.approx(result.score, abs=1e-3)
    assert "fc2" not in [l.name for l in compare(model, result.model, batches).layers]


def test_returned_quantizer_reproduces_the_model(case):
    model, batches = case
    result = skip_sensitive(model, (batches[0],), batches, target=25.0, quantizer_factory=broken_quantizer)
    prepared = prepare_pt2e(torch.export.export(model, (batches[0],)).module(), result.quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
        again = convert_pt2e(prepared)
        assert torch.equal(again(batches[0]), result.model(batches[0]))
    assert result.quantizer.last_report.annotated["linear"] == 3  # fc2 left float, the rest int8


def test_target_already_met_skips_nothing(case):
    model, batches = case
    result = skip_sensitive(model, (batches[0],), batches, target=10.0)
    assert result.skipped == [] and result.target_met and len(result.history) == 1


def test_user_metric_and_max_skips(case):
    model, batches = case

    def argmax_agreement(float_out, quant_out):  # higher is better; 1.0 = same decisions
        return float((float_out.argmax(-1) == quant_out.argmax(-1)).float().mean())

    with pytest.warns(UserWarning, match="target 1.1 not met"):
        result = skip_sensitive(model, (batches[0],), batches, metric=argmax_agreement, target=1.1,
                                quantizer_factory=broken_quantizer, max_skips=2)
    assert not result.target_met
    assert [skips for skips, _ in result.history] == [(), ("fc2",), ("fc2", result.history[2][0][1])]
    # the best round is returned; on a tie the one with fewer skips
    assert result.score == max(score for _, score in result.history) > result.history[0][1]
    assert result.skipped == ["fc2"]
