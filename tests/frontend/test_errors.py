"""Every misuse fails with a message naming the problem and the fix; degenerate data stays finite."""

import pytest
import torch
from torch import nn

import inductor_quant
from inductor_quant import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from inductor_quant.errors import AnnotationError, CalibrationError, ExportFailedError, QuantizationFlowError
from inductor_quant.quantizer import SharedQuantizationSpec
from flow_helpers import ANN, BackendQuantizer, LinearModel, act_spec, calibrate, export

qd = torch.ops.quantized_decomposed


@pytest.mark.parametrize("prepare", [prepare_pt2e, prepare_qat_pt2e])
def test_plain_module_says_export_first(prepare):
    with pytest.raises(TypeError, match=r"torch\.export\.export\(model, example_inputs\)\.module\(\)"):
        prepare(LinearModel(), BackendQuantizer())


def test_convert_twice():
    x = torch.randn(2, 16)
    p = prepare_pt2e(export(LinearModel().eval(), x), BackendQuantizer())
    calibrate(p, [x])
    q = convert_pt2e(p)
    with pytest.raises(QuantizationFlowError, match="called twice"):
        convert_pt2e(q)


def test_convert_unprepared_and_prepare_twice():
    x = torch.randn(2, 16)
    gm = export(LinearModel().eval(), x)
    with pytest.raises(QuantizationFlowError, match="prepare_pt2e"):
        convert_pt2e(gm)
    p = prepare_pt2e(gm, BackendQuantizer())
    with pytest.raises(QuantizationFlowError, match="already prepared"):
        prepare_pt2e(p, BackendQuantizer())


def test_uncalibrated_names_layers():
    p = prepare_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), BackendQuantizer())
    with pytest.raises(CalibrationError, match=r"(?s)saw no data.*'fc1'.*'fc2'.*run calibration"):
        convert_pt2e(p)


def test_reference_representation_not_supported():
    with pytest.raises(NotImplementedError, match="convert_pt2e\\(model\\)"):
        convert_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), use_reference_representation=True)


class _Bad(BackendQuantizer):
    """Annotates fc2 with a key that is not one of its inputs."""

    def __init__(self, mode):
        super().__init__(derived_bias=False)
        self.mode = mode

    def annotate(self, gm):
        super().annotate(gm)
        lins = [n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default]
        ann = lins[1].meta[ANN]
        if self.mode == "not_input":
            ann.input_qspec_map[lins[0].args[0]] = act_spec()  # the model input is fc1's input only
        elif self.mode == "not_in_graph":
            ghost = torch.fx.Graph().placeholder("ghost")
            ann.input_qspec_map[ghost] = act_spec()
        else:
            ghost = torch.fx.Graph().placeholder("ghost")
            ann.output_qspec = SharedQuantizationSpec(ghost)
        return gm


@pytest.mark.parametrize("mode,match", [
    ("not_input", "not an input of it"),
    ("not_in_graph", "not in the graph"),
    ("shared_ghost", "ghost"),
])
def test_annotation_referencing_foreign_node(mode, match):
    with pytest.raises(AnnotationError, match=match):
        prepare_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), _Bad(mode))


def test_nan_calibration_names_layer():
    p = prepare_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), BackendQuantizer(derived_bias=False))
    x = torch.randn(2, 16)
    x[0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"(?s)'fc1'.*NaN or inf.*calibrate with finite data"):
        calibrate(p, [x])


def test_inf_calibration_with_minmax_observer():
    from torch.ao.quantization.observer import MinMaxObserver

    q = BackendQuantizer(act_ctr=MinMaxObserver.with_args(eps=2**-12), derived_bias=False)
    p = prepare_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), q)
    x = torch.randn(2, 16)
    x[1, 3] = float("inf")
    with pytest.raises(CalibrationError, match="fc1"):
        calibrate(p, [x])


def test_degenerate_data_gives_finite_scales():
    """All-zero weight channel, all-zero and constant activations, and eps=2-12 (negative)."""
    torch.manual_seed(0)
    model = LinearModel().eval()
    with torch.no_grad():
        model.fc1.weight[3].zero_()
        model.fc2.weight.zero_()
        model.fc2.bias.fill_(0.5)  # fc2 output is a constant
    for per_channel in (False, True):
        p = prepare_pt2e(export(model, torch.randn(2, 16)), BackendQuantizer(per_channel=per_channel))
        calibrate(p, [torch.zeros(2, 16)])  # all-zero input activation
        q = convert_pt2e(p)
        for n in q.graph.nodes:
            if n.target in (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default):
                assert 0 < n.args[1] < float("inf"), n
        for name, buf in q.named_buffers():
            if buf.is_floating_point():
                assert torch.isfinite(buf).all(), name
        out = q(torch.randn(2, 16))
        assert torch.isfinite(out).all()
        assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.01)


def test_quantize_helper_export_failure_shows_fixes():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x + 1
            return x - 1

    with pytest.raises(ExportFailedError, match=r"(?s)could not capture.*Usual fixes"):
        inductor_quant.quantize(DataDependent(), (torch.randn(2, 3),), [], quantizer=BackendQuantizer())


def test_foreign_quantizer_says_where_to_import_from():
    class NotOurs:
        def annotate(self, gm):
            return gm

        def validate(self, gm):
            pass

    with pytest.raises(TypeError, match="from inductor_quant.quantizer"):
        prepare_pt2e(export(LinearModel().eval(), torch.randn(2, 16)), NotOurs())


def test_failed_convert_leaves_model_usable():
    """Convert before calibration fails; calibrating and converting again then works."""
    x = torch.randn(2, 16)
    p = prepare_pt2e(export(LinearModel().eval(), x), BackendQuantizer())
    with pytest.raises(CalibrationError):
        convert_pt2e(p)
    calibrate(p, [x])
    assert torch.isfinite(convert_pt2e(p)(x)).all()
