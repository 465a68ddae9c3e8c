"""Numeric debugger (inductor_quant.numerics): statistics, layer matching, ranking, JSON, plot."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from inductor_quant import quantize
from inductor_quant.numerics import Agreement, NumericReport, compare, layer_nodes

from flow_helpers import sqnr


class MLP(nn.Module):
    """Four bias-free linears: scaling one layer's weight by k scales its output by k exactly."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.head = nn.Linear(width, 8, bias=False)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.head(x)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def corrupt_weight_scale(converted, layer: str, factor: float = 50.0) -> None:
    """Multiply the dequantize scale constant of `layer`'s int8 weight by `factor` (after convert)."""
    node = layer_nodes(converted)[layer]
    scale_attr = node.args[1].args[1].target
    setattr(converted, scale_attr, getattr(converted, scale_attr) * factor)


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(0)
    model = MLP().eval()
    batches = [torch.randn(16, 32) for _ in range(4)]
    return model, batches, quantize(model, (batches[0],), batches)


# ---------------------------------------------------------------------------- statistics
def test_agreement_known_values():
    ref = torch.ones(100, dtype=torch.float64)
    a = Agreement().add(ref, ref * 1.1)  # noise = 0.01 per element -> 20 dB; same direction
    assert a.sqnr == pytest.approx(20.0, abs=1e-9)
    assert a.cosine == pytest.approx(1.0, abs=1e-12)
    assert a.max_abs == pytest.approx(0.1, rel=1e-6)
    ortho = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # 45 degrees, noise == signal
    b = Agreement().add(*ortho)
    assert b.cosine == pytest.approx(1 / math.sqrt(2)) and b.sqnr == pytest.approx(0.0, abs=1e-9)


def test_agreement_accumulates_batches_and_stays_finite():
    x, y = torch.randn(64), torch.randn(64)
    split = Agreement().add(x[:32], y[:32]).add(x[32:], y[32:])
    whole = Agreement().add(x, y)
    assert split.sqnr == pytest.approx(whole.sqnr) and split.cosine == pytest.approx(whole.cosine)
    exact = Agreement().add(x, x)
    assert math.isfinite(exact.sqnr) and exact.sqnr > 100 and exact.cosine == pytest.approx(1.0)
    assert Agreement().add(torch.zeros(3), torch.zeros(3)).cosine == 1.0


# ---------------------------------------------------------------------------- report
def test_report_matches_every_quantized_layer_and_is_consistent(mlp_case):
    model, batches, converted = mlp_case
    report = compare(model, converted, batches)
    assert [l.name for l in report.layers] == ["fc1", "fc2", "fc3", "head"]
    assert not report.unmatched
    first = report.layers[0]
    # the first layer sees the same input in both models: cumulative == local
    assert first.act_sqnr == pytest.approx(first.local_sqnr)
    for l in report.layers:
        assert 20 < l.act_sqnr < 60 and l.act_cosine > 0.99, l
        assert 35 < l.weight_sqnr < 60 and l.weight_cosine > 0.9999, l
    # end to end agrees with an independent computation on the whole output
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches])
        out = torch.cat([converted(b) for b in batches])
    assert report.end_to_end["converted vs float"]["sqnr"] == pytest.approx(sqnr(ref, out), abs=1e-3)
    assert report.layers[-1].act_sqnr == pytest.approx(sqnr(ref, out), abs=1e-3)  # head output is the model output


def test_corrupted_weight_scale_is_ranked_first_with_the_expected_sqnr(mlp_case):
    import copy

    model, batches, converted = mlp_case
    broken = copy.deepcopy(converted)
    corrupt_weight_scale(broken, "fc2", 50.0)
    report = compare(model, broken, batches)
    worst = report.worst(1)[0]
    assert worst.name == "fc2"
    # dequantized weight ~= 50 W: error 49 W -> SQNR = -20 log10(49) = -33.8 dB, direction kept
    assert worst.weight_sqnr == pytest.approx(-20 * math.log10(49), abs=0.3)
    assert worst.weight_cosine > 0.999
    assert worst.local_sqnr == pytest.approx(-20 * math.log10(49), abs=0.5)  # bias-free: output scales by 50
    # fc3 inherits the damage (cumulative) but adds none of its own (local stays good)
    fc3 = next(l for l in report.layers if l.name == "fc3")
    assert fc3.act_sqnr < 0 and fc3.local_sqnr > 20
    assert report.end_to_end["converted vs float"]["sqnr"] < 0


def test_bn_is_folded_on_the_float_side_so_conv_outputs_match():
    torch.manual_seed(0)
    model = SmallCNN()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    model.bn1.weight.data.uniform_(0.5, 3)
    model.eval()
    batches = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    converted = quantize(model, (batches[0],), batches)
    report = compare(model, converted, batches)
    assert [l.name for l in report.layers] == ["conv1", "conv2", "fc"]
    assert all(l.local_sqnr > 25 and l.weight_sqnr > 35 for l in report.layers), report.table()


def test_layer_called_twice_is_reported_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    torch.manual_seed(0)
    model = Shared().eval()
    batches = [torch.randn(8, 16) for _ in range(2)]
    report = compare(model, quantize(model, (batches[0],), batches), batches)
    assert [(l.name, l.module) for l in report.layers] == [("fc", "fc"), ("fc#1", "fc")]


def test_skipped_layer_is_not_reported():
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    model = MLP().eval()
    batches = [torch.randn(8, 32)]
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_name_qconfig("fc2", None)
    report = compare(model, quantize(model, (batches[0],), batches, quantizer=quantizer), batches)
    assert [l.name for l in report.layers] == ["fc1", "fc3", "head"]


def test_dynamic_quantization_on_an_encoder():
    """Dynamic linears: the layer-alone replay re-runs choose_qparams on the float input."""
    from inductor_quant.benchmarks.zoo import BertEncoder
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    torch.manual_seed(0)
    model = BertEncoder(layers=1, hidden=32, heads=2, mlp=64, vocab=50).eval()
    batches = [torch.randint(0, 50, (2, 8)) for _ in range(2)]
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=True))
    report = compare(model, quantize(model, (batches[0],), batches, quantizer=quantizer), batches)
    assert len(report.layers) == 6  # query, key, value, out, intermediate, output
    by_name = {l.name: l for l in report.layers}
    # query/key/value read the same float input: their first-in-chain numbers are their own
    for name in ("layers.0.attention.query", "layers.0.attention.key", "layers.0.attention.value"):
        assert by_name[name].act_sqnr == pytest.approx(by_name[name].local_sqnr), name
    assert all(l.local_sqnr > 25 and l.weight_sqnr > 35 for l in report.layers), report.table()


# ---------------------------------------------------------------------------- output formats
def test_table_lists_worst_first(mlp_case):
    import copy

    model, batches, converted = mlp_case
    broken = copy.deepcopy(converted)
    corrupt_weight_scale(broken, "fc3")
    text = compare(model, broken, batches).table()
    rows = text.splitlines()
    assert rows[0].split()[:2] == ["layer", "op"]
    assert rows[2].startswith("fc3 ")
    assert "end to end, converted vs float" in text


def test_json_round_trips_and_is_strict(mlp_case):
    model, batches, converted = mlp_case
    report = compare(model, converted, batches[:1])
    text = report.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    again = NumericReport.from_json(text)
    assert again == report
    assert again.worst(2) == report.worst(2)


def test_plot_writes_png(mlp_case, tmp_path):
    pytest.importorskip("matplotlib")
    model, batches, converted = mlp_case
    path = compare(model, converted, batches[:1]).plot(str(tmp_path / "numerics.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"inductor-quant\[plot\]"):
        NumericReport().plot(str(tmp_path / "x.png"))


def test_compiled_model_end_to_end(mlp_case):
    """The one torch.compile here: compiled vs eager converted vs float, on the final outputs."""
    model, batches, converted = mlp_case
    torch._dynamo.reset()
    with torch._inductor.config.patch(freezing=True):
        report = compare(model, converted, batches, compiled_model=torch.compile(converted))
    e2e = report.end_to_end
    assert set(e2e) == {"converted vs float", "compiled vs float", "compiled vs converted"}
    assert e2e["compiled vs converted"]["sqnr"] > 35  # same int8 math; fused kernels round differently
    assert e2e["compiled vs float"]["sqnr"] == pytest.approx(e2e["converted vs float"]["sqnr"], abs=3)
    assert "compiled vs converted" in report.table()
