"""The private torch names we rely on (kernels/compat.py): present on every supported torch, and
when one goes missing, a clear warning and a correct unfused model -- never a crash."""

import importlib
import warnings

import pytest
import torch

import inductor_quant.passes as iq_passes
from inductor_quant.kernels import compat

from compile_utils import compile_and_run, onednn_calls
from qdq_models import QDQLayer
from variants import BY_ID

install_module = importlib.import_module("inductor_quant.passes.install")  # (passes.install is the function)


def test_this_torch_has_every_private_name_we_use():
    assert compat.missing() == [], f"torch {torch.__version__} lacks: {compat.missing()}"


def test_graph_kinds_by_input_names():
    def graph(*names):
        g = torch.fx.Graph()
        for n in names:
            g.placeholder(n)
        return g

    assert compat.graph_kind(graph("arg0_1", "arg1_1")) == "inference"
    assert compat.graph_kind(graph("primals_1", "tangents_1")) == "joint"
    assert compat.graph_kind(graph("x", "weight")) == "unknown"


def _compile_warned(model):
    install_module.reset_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref, out, code, stats = compile_and_run(model, model.example_inputs())
    return ref, out, code, stats, [str(w.message) for w in caught if "inductor_quant" in str(w.message)]


def test_unknown_graph_input_names_leave_a_correct_unfused_model(monkeypatch):
    """If AOTAutograd renamed its graph inputs, we could not tell a training graph from an
    inference one: the layers stay unfused with that reason (not "freezing off"), one warning."""
    monkeypatch.setattr(compat, "graph_kind", lambda graph: "unknown")
    ref, out, code, stats, warned = _compile_warned(QDQLayer(BY_ID["qconv2d.relu.q"]).eval())
    assert onednn_calls(code, "qconv_pointwise") == 0
    torch.testing.assert_close(out, ref)
    assert [u.code for u in stats["unfused"]] == ["unknown_graph"]
    assert len(warned) == 1 and "names the compiled graph's inputs" in warned[0]


def test_missing_pattern_matcher_warns_and_convert_still_works(torch_default_state, monkeypatch):
    # (fixture order: monkeypatch is undone before torch_default_state re-installs our passes)
    from inductor_quant import convert_pt2e, prepare_pt2e
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    monkeypatch.setattr(compat, "pattern_matcher", lambda: None)
    install_module.INSTALLATION.warned.discard("pattern_matcher")
    model, example = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval(), (torch.randn(1, 3, 8, 8),)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    prepared(*example)
    with pytest.warns(UserWarning, match="lacks Inductor's pattern matcher API"):
        converted = convert_pt2e(prepared)
    assert not iq_passes.is_installed()
    torch.testing.assert_close(converted(*example), model(*example), atol=0.1, rtol=0.05)
    monkeypatch.undo()
    iq_passes.install()
    assert iq_passes.is_installed()
