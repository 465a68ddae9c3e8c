"""The converted model runs eagerly, re-exports, and round-trips torch.export.save/load."""

import pytest
import torch

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from flow_helpers import BackendQuantizer, ConvBNModel, ConvModel, calibrate, export, randomize_bn

qd = torch.ops.quantized_decomposed


def _x86():
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


@pytest.mark.parametrize("model,quantizer", [
    (ConvModel, BackendQuantizer),  # every spec kind, incl. int32 derived bias
    (lambda: randomize_bn(ConvBNModel()), _x86),
], ids=["backend_quantizer", "x86"])
def test_reexport_save_load_identical(tmp_path, model, quantizer):
    torch.manual_seed(0)
    m = model().eval()
    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_pt2e(export(m, x), quantizer())
    calibrate(prepared, [x, torch.randn_like(x)])
    q = convert_pt2e(prepared)
    ref = q(x)

    ep = torch.export.export(q, (x,))
    ops = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert qd.quantize_per_tensor.default in ops and qd.dequantize_per_tensor.default in ops
    path = tmp_path / "quantized.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
    torch.testing.assert_close(ep.module()(x), ref, rtol=0, atol=0)


def test_int8_constants_survive_save(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_pt2e(export(ConvBNModel().eval(), x), _x86())
    calibrate(prepared, [x])
    q = convert_pt2e(prepared)
    path = tmp_path / "q.pt2"
    torch.export.save(torch.export.export(q, (x,)), path)
    ep = torch.export.load(path)
    dtypes = {t.dtype for t in list(ep.state_dict.values()) + list(ep.constants.values()) if isinstance(t, torch.Tensor)}
    assert torch.int8 in dtypes


def test_calibrated_state_dict_loads_into_a_fresh_prepare():
    """Calibrate once, save state_dict; re-export + re-prepare + load gives the same converted model."""
    torch.manual_seed(0)
    model, x = randomize_bn(ConvBNModel()).eval(), torch.randn(2, 3, 8, 8)
    first = prepare_pt2e(export(model, x), _x86())
    calibrate(first, [x, torch.randn_like(x)])
    state = first.state_dict()
    second = prepare_pt2e(export(model, x), _x86())
    second.load_state_dict(state)
    torch.testing.assert_close(convert_pt2e(second)(x), convert_pt2e(first)(x), rtol=0, atol=0)


def test_quantize_helper_progress_bar_on_tty(monkeypatch, capsys):
    import sys

    import inductor_quant

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    x = torch.randn(2, 3, 8, 8)
    inductor_quant.quantize(ConvBNModel().eval(), (x,), [x, x], quantizer=BackendQuantizer())
    assert "calibrating" in capsys.readouterr().err
