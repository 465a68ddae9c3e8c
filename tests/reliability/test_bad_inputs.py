"""Bad-input catalogue (issue 6, item 2): each case ends in a clear error naming the problem and
the fix, or in a correct float fallback with ONE warning; never a silently wrong result, never a
lost model. Cases already pinned in tests/frontend/test_errors.py are referenced, not repeated.

Compiled cases share one compile of `Catalogue` (padding modes, zero weight channel, shared and
tied weights, in-place ops, constant activation) so the file stays well under two minutes.
"""

import copy
import re
import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

import inductor_quant
import inductor_quant.passes as iq_passes
from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.errors import (
    CalibrationError,
    ExportFailedError,
    InputMismatchError,
    QuantizationFlowError,
    UnsupportedModelError,
)
from helpers import (
    ConvLinear,
    compile_frozen,
    float_compute_calls,
    onednn_calls,
    ptq,
    qd,
    quant_step,
    sqnr,
    x86_quantizer,
)

NO_FREEZING = "because this compile does not freeze"
NO_CACHES = dict(fx_graph_cache=False)  # a cache hit skips the joint-stage pass and its warning


class Linear(nn.Module):
    def __init__(self, n=8):
        super().__init__()
        self.fc = nn.Linear(n, 4)

    def forward(self, x):
        return self.fc(x)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


# ---- un-exportable model ------------------------------------------------------------------------
# prepare_pt2e(eager module) -> TypeError with the export line: test_errors.py::test_plain_module_says_export_first
# quantize() export failure message: test_errors.py::test_quantize_helper_export_failure_shows_fixes


def test_unexportable_model_error_keeps_model_intact():
    class NumpyRoundTrip(nn.Module):  # leaves torch: export cannot trace it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.from_numpy(x.numpy() * 2))

    model = NumpyRoundTrip().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 8)
    ref = model(x)
    with pytest.raises(ExportFailedError, match=r"(?s)could not capture the model.*Usual fixes"):
        inductor_quant.quantize(model, (x,), [x], quantizer=x86_quantizer())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)  # the float model still works


# ---- dtypes -----------------------------------------------------------------------------------


def test_float64_model_is_refused_with_the_fix():
    x = torch.randn(2, 8, dtype=torch.float64)
    gm = torch.export.export(Linear().double().eval(), (x,)).module()
    with pytest.raises(UnsupportedModelError, match=r"(?s)torch\.float64: 'fc'.*model\.float\(\)"):
        prepare_pt2e(gm, x86_quantizer())


def test_float64_calibration_data_is_refused_with_the_fix():
    x = torch.randn(2, 8)
    prepared = prepare_pt2e(torch.export.export(Linear().eval(), (x,)).module(), x86_quantizer())
    with pytest.raises(InputMismatchError, match=r"'x' is torch\.float64.*exported with torch\.float32.*x\.to\(torch\.float32\)"):
        prepared(x.double())
    prepared(x)  # still usable
    assert torch.isfinite(convert_pt2e(prepared)(x)).all()


def test_integer_inputs_stay_unquantized_and_the_rest_quantizes():
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(16, 8), nn.Linear(8, 4)

        def forward(self, idx):
            return self.fc(self.emb(idx))

    torch.manual_seed(0)
    model, idx = Embed().eval(), torch.randint(0, 16, (4, 5))
    q = ptq(model, (idx,), calibration=[(idx,), (torch.randint(0, 16, (4, 5)),)])
    quantized = [n.args[0] for n in q.graph.nodes if n.target == qd.quantize_per_tensor.default]
    assert quantized and all(n.meta["val"].dtype == torch.float32 for n in quantized)
    assert sqnr(model(idx), q(idx)) >= 25
    with pytest.raises(InputMismatchError, match="torch.float32.*exported with torch.int64"):
        q(idx.float())


def test_complex_values_stay_float_and_real_layers_quantize():
    class Complex(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfc = nn.Linear(8, 8, dtype=torch.cfloat)
            self.fc = nn.Linear(8, 4)

        def forward(self, z):
            return self.fc(self.cfc(z).abs())

    torch.manual_seed(0)
    model, z = Complex().eval(), torch.randn(2, 8, dtype=torch.cfloat)
    q = ptq(model, (z,))
    for n in q.graph.nodes:
        if n.target in (qd.quantize_per_tensor.default, qd.dequantize_per_channel.default):
            assert not n.args[0].meta["val"].dtype.is_complex, n
    assert _targets(q).count(qd.dequantize_per_channel.default) == 1  # fc only
    assert sqnr(model(z), q(z)) >= 25


# ---- calibration data ---------------------------------------------------------------------------
# convert_pt2e without calibration names the layers: test_errors.py::test_uncalibrated_names_layers


@pytest.mark.parametrize("empty", [[], iter([]), (x for x in [])], ids=["list", "iterator", "generator"])
def test_empty_calibration_iterable(empty):
    x = torch.randn(2, 8)
    with pytest.raises(CalibrationError, match=r"(?s)yielded no batches.*Fix: pass a non-empty"):
        inductor_quant.quantize(Linear().eval(), (x,), empty, quantizer=x86_quantizer())


# NaN/inf names the layer: test_errors.py::test_nan_calibration_names_layer / test_inf_calibration_with_minmax_observer
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_calibration_default_quantizer_then_recovers(bad):
    torch.manual_seed(0)
    model, x = Linear().eval(), torch.randn(2, 8)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), x86_quantizer())
    poisoned = x.clone()
    poisoned[1, 2] = bad
    with pytest.raises(CalibrationError, match=r"(?s)'fc'.*NaN or inf.*calibrate with finite data"):
        prepared(poisoned)
    prepared(x)  # the prepared model survives: finite data calibrates and converts
    assert sqnr(model(x), convert_pt2e(prepared)(x)) >= 25


def test_calibration_shape_unlike_export_names_the_fix():
    x = torch.randn(2, 8)
    prepared = prepare_pt2e(torch.export.export(Linear().eval(), (x,)).module(), x86_quantizer())
    with pytest.raises(InputMismatchError, match=r"(?s)shape \(5, 8\).*exported for shape \(2, 8\).*dim 0 is static.*dynamic_shapes="):
        prepared(torch.randn(5, 8))
    with pytest.raises(InputMismatchError, match=r"3-D.*2-D"):
        prepared(torch.randn(2, 8, 1))


# ---- flow misuse --------------------------------------------------------------------------------
# convert twice on the same object: test_errors.py::test_convert_twice


def test_convert_or_prepare_a_converted_model_loaded_from_disk(tmp_path):
    x = torch.randn(2, 8)
    q = ptq(Linear().eval(), (x,))
    path = tmp_path / "q.pt2"
    torch.export.save(torch.export.export(q, (x,)), path)
    loaded = torch.export.load(path).module()  # the stage marker does not survive; the q/dq ops do
    with pytest.raises(QuantizationFlowError, match="already converted"):
        convert_pt2e(loaded)
    with pytest.raises(QuantizationFlowError, match="already contains quantize/dequantize ops.*quantize twice"):
        prepare_pt2e(loaded, x86_quantizer())
    torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)  # the model is not lost


class OwnQDQOnAnActivation(nn.Module):
    """A float model carrying its own quantize -> dequantize pair on an activation (as upstream's
    regression tests write them): not a converted model."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        y = self.l2(x)
        y = qd.dequantize_per_tensor.default(qd.quantize_per_tensor.default(y, 0.05, 128, 0, 255, torch.uint8),
                                             0.05, 128, 0, 255, torch.uint8)
        return self.l1(x) + y


def test_a_float_model_with_its_own_qdq_on_an_activation_is_quantized(our_passes_only):
    model, x = OwnQDQOnAnActivation().eval(), torch.randn(4, 16)
    q = ptq(model, (x,))
    assert q(x).shape == model(x).shape
    assert sqnr(model(x), q(x)) > 25
    _, out, code = compile_frozen(q, x)
    assert onednn_calls(code, "qlinear_pointwise") == 2 and not float_compute_calls(code), code
    assert (out - q(x)).abs().max() <= quant_step(q) + 1e-5
    with pytest.raises(QuantizationFlowError, match="was already converted"):
        prepare_pt2e(q, x86_quantizer())


# ---- devices ------------------------------------------------------------------------------------


def test_meta_parameters_are_refused_with_the_fix():
    with torch.device("meta"):
        model = Linear()
    gm = torch.export.export(model.eval(), (torch.randn(2, 8, device="meta"),)).module()
    with pytest.raises(UnsupportedModelError, match=r"(?s)meta device.*'fc\.\w+'.*to_empty\(device='cpu'\)"):
        prepare_pt2e(gm, x86_quantizer())


def test_meta_input_to_cpu_model_is_refused():
    x = torch.randn(2, 8)
    q = ptq(Linear().eval(), (x,))
    with pytest.raises(InputMismatchError, match=r"on device meta.*quantized on cpu.*x\.to\('cpu'\)"):
        q(torch.randn(2, 8, device="meta"))


# ---- degenerate data + graph shapes, eager ------------------------------------------------------
# all-zero channels / constant activations with the tutorial quantizer: test_errors.py::test_degenerate_data_gives_finite_scales


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_padding_mode_conv_quantizes_correctly_eager(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, padding_mode=mode), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    q = ptq(model, (x,))
    assert _targets(q).count(qd.dequantize_per_channel.default) == 1
    assert sqnr(model(x), q(x)) >= 30


# ---- the shared compiled catalogue model --------------------------------------------------------


class Catalogue(nn.Module):
    """One compile, several catalogue items; each output is one concern."""

    def __init__(self):
        super().__init__()
        self.reflect = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
        self.shared = nn.Linear(8, 8)  # called twice
        self.head = nn.Linear(8, 4)
        self.tied = nn.Linear(8, 4)
        self.tied.weight = self.head.weight  # tied weights
        self.const = nn.Linear(8, 4)  # reads a constant activation
        with torch.no_grad():
            self.reflect.weight[2].zero_()  # an all-zero weight channel
            self.reflect.bias[2] = 0.25

    def forward(self, x):
        y = self.reflect(x)
        y.relu_()  # in-place relu on a conv output
        z = self.circular(y)
        z += y  # in-place residual add
        z.relu_()
        v = z.mean((2, 3))
        v.add_(0.125)  # in-place add with a scalar
        s = self.shared(self.shared(v))
        k = self.const(torch.zeros_like(v) + 0.5)
        return y, z, self.head(s), self.tied(torch.relu(s)), k


@pytest.fixture(scope="module")
def catalogue(our_passes_only):
    torch.manual_seed(0)
    model = Catalogue().eval()
    x = torch.randn(2, 3, 8, 8)
    q = ptq(model, (x,))
    iq_passes.reset_stats()
    with torch.no_grad():
        ref = q(x)
        _, out, code = compile_frozen(q, x, fullgraph=True)
    return dict(model=model, q=q, x=x, ref=ref, out=out, code=code, stats=iq_passes.stats())


def _close(a, b, q):
    torch.testing.assert_close(a, b, rtol=0, atol=quant_step(q) * 1.01)


def test_catalogue_every_layer_fused(catalogue):
    code, stats = catalogue["code"], catalogue["stats"]
    assert onednn_calls(code, "qconv_pointwise") + onednn_calls(code, "qconv2d_pointwise") == 2
    assert onednn_calls(code, "qlinear_pointwise") == 5  # shared x2, head, tied, const
    assert not float_compute_calls(code)
    assert stats["unfused"] == []


def test_padding_modes_compiled(catalogue):
    """reflect/circular padding is an explicit aten.pad before a padding=0 conv: quantized correctly."""
    q = catalogue["q"]
    pads = [n for n in q.graph.nodes if n.target == torch.ops.aten.pad.default]
    assert sorted(n.args[2] for n in pads) == ["circular", "reflect"]
    for i in (0, 1):
        _close(catalogue["out"][i], catalogue["ref"][i], q)
        assert sqnr(catalogue["model"](catalogue["x"])[i], catalogue["ref"][i]) >= 25


def test_all_zero_weight_channel(catalogue):
    q, x = catalogue["q"], catalogue["x"]
    scale = q.reflect_weight_scale
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert torch.equal(q.reflect_weight_quantized[2], torch.zeros_like(q.reflect_weight_quantized[2]))
    # channel 2 is relu(bias) = 0.25 everywhere, eager and compiled, up to the output quantization
    for y in (catalogue["ref"][0], catalogue["out"][0]):
        torch.testing.assert_close(y[:, 2], torch.full_like(y[:, 2], 0.25), rtol=0, atol=quant_step(q))


def test_shared_and_tied_weights(catalogue):
    q = catalogue["q"]
    int8 = [name for name, b in q.named_buffers() if b.dtype == torch.int8]
    assert len(int8) == 5  # reflect, circular, shared (once for two calls), head/tied (once), const

    def weight_consts(module_name):
        lins = [n for n in q.graph.nodes if n.target == torch.ops.aten.linear.default
                and module_name in str(list(n.meta.get("nn_module_stack", {}).values())[-1][0])]
        return {n.args[1].args[0].target for n in lins}, len(lins)

    assert weight_consts("shared") == ({"shared_weight_quantized"}, 2)
    assert weight_consts("head")[0] == weight_consts("tied")[0]
    for i in (2, 3):
        _close(catalogue["out"][i], catalogue["ref"][i], q)
        assert sqnr(catalogue["model"](catalogue["x"])[i], catalogue["ref"][i]) >= 20


def test_in_place_ops(catalogue):
    model, q, x = catalogue["model"], catalogue["q"], catalogue["x"]
    snapshot = x.clone()
    with torch.no_grad():
        float_out, eager_out = model(x), q(x)
    assert torch.equal(x, snapshot)  # no in-place op leaks into the caller's tensor
    for f, e, c in zip(float_out, eager_out, catalogue["out"]):
        assert sqnr(f, e) >= 20
        _close(c, e, q)


def test_in_place_op_on_the_model_input_is_kept():
    """x.relu_() on the input mutates the caller's tensor in float; the converted model does the same."""

    class MutatesInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x.relu_()
            return self.fc(x)

    torch.manual_seed(0)
    model, x = MutatesInput().eval(), torch.randn(2, 8)
    q = ptq(model, (x.clone(),))
    a, b = x.clone(), x.clone()
    with torch.no_grad():
        float_out, q_out = model(a), q(b)
    assert torch.equal(a, b) and torch.equal(b, x.relu())
    assert sqnr(float_out, q_out) >= 25


def test_constant_activation(catalogue):
    q = catalogue["q"]
    for n in q.graph.nodes:
        if n.target == qd.quantize_per_tensor.default:
            assert 0 < n.args[1] < float("inf") and n.args[3] <= n.args[2] <= n.args[4], n
    float_k = catalogue["model"](catalogue["x"])[4]
    torch.testing.assert_close(catalogue["ref"][4], float_k, rtol=0, atol=0.02)
    _close(catalogue["out"][4], catalogue["ref"][4], q)


# ---- run-time shapes ------------------------------------------------------------------------


def test_input_outside_exported_dynamic_range_compiled(our_passes_only):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    q = ptq(ConvLinear().eval(), (x,), dynamic_shapes=({0: Dim("batch", min=2, max=8)},))
    compiled, out, code = compile_frozen(q, x, dynamic=True, fullgraph=True)  # the input check traces: no graph break
    assert onednn_calls(code, "qconv_pointwise") == 1 and onednn_calls(code, "qlinear_pointwise") == 1
    x5 = torch.randn(5, 3, 8, 8)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        torch.testing.assert_close(out, q(x), rtol=0, atol=quant_step(q))
        torch.testing.assert_close(compiled(x5), q(x5), rtol=0, atol=quant_step(q))
        for bad in (16, 1):
            with pytest.raises(InputMismatchError, match=rf"shape \({bad}, 3, 8, 8\): dim 0 is outside the dynamic range \[2, 8\].*Fix"):
                q(torch.randn(bad, 3, 8, 8))
            # fullgraph=True: Dynamo cannot graph-break to raise it eagerly, so our message arrives
            # inside its Unsupported("Observed exception"); without fullgraph it is the error itself
            with pytest.raises((InputMismatchError, torch._dynamo.exc.Unsupported),
                               match=r"(?s)InputMismatchError.*dim 0 is outside the dynamic range \[2, 8\].*Fix"
                               r"|^input 'x' has shape \(\d+, 3, 8, 8\): dim 0 is outside the dynamic range \[2, 8\]"):
                compiled(torch.randn(bad, 3, 8, 8))
        torch.testing.assert_close(compiled(x5), q(x5), rtol=0, atol=quant_step(q))  # still serving


# ---- compiling the wrong stage / with grad ---------------------------------------------------


def test_compiling_a_prepared_model_warns_once_and_runs_float(our_passes_only):
    torch.manual_seed(0)
    model, x = ConvLinear().eval(), torch.randn(2, 3, 8, 8)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), x86_quantizer())
    torch._dynamo.reset()
    compiled = torch.compile(prepared)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [compiled(x), compiled(2 * x)]
    ours = [str(w.message) for w in caught if "inductor_quant" in str(w.message)]
    assert len(ours) == 1 and "*prepared* model" in ours[0] and "convert_pt2e(prepared)" in ours[0], ours
    torch.testing.assert_close(outs[0], model(x))  # float, correct
    torch.testing.assert_close(outs[1], model(2 * x))
    # the compiled calls calibrated: convert works and its result is the int8 model, no warning hook left
    q = convert_pt2e(prepared)
    assert sqnr(model(x), q(x)) >= 25
    from inductor_quant.export_utils import PreparedCompileWarning

    assert not any(isinstance(h, PreparedCompileWarning) for h in q._forward_pre_hooks.values())


def _grad_enabled_compile(q, x):
    import importlib

    importlib.import_module("inductor_quant.passes.install").reset_warning()
    torch._dynamo.reset()
    with torch._inductor.config.patch(freezing=True, **NO_CACHES), \
            torch._functorch.config.patch(enable_autograd_cache=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.is_grad_enabled()
        compiled = torch.compile(q)
        outs = [compiled(x), compiled(x + 1)]
        torch._dynamo.reset()
        outs.append(torch.compile(q)(x))  # a second compile: still one warning per process
    return outs, [str(w.message) for w in caught if NO_FREEZING in str(w.message)]


@pytest.fixture(scope="module")
def grad_model():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    return ptq(ConvLinear().eval(), (x,)), x


def test_grad_enabled_compile_inference_model_warns_once_and_is_correct(our_passes_only, grad_model):
    q, x = grad_model
    q = copy.deepcopy(q).requires_grad_(False)  # nothing requires grad: Inductor's inference path
    outs, ours = _grad_enabled_compile(q, x)
    assert len(ours) == 1 and "torch.no_grad()" in ours[0] and "freezing" in ours[0]
    for out, inp in zip(outs, (x, x + 1, x)):
        torch.testing.assert_close(out, q(inp))


def test_grad_enabled_compile_default_converted_model(our_passes_only, grad_model):
    q, x = grad_model
    outs, ours = _grad_enabled_compile(q, x)
    assert len(ours) == 1
    for out, inp in zip(outs, (x, x + 1, x)):
        torch.testing.assert_close(out, q(inp))
