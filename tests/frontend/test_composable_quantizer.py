"""ComposableQuantizer: order is precedence; earlier annotations are never overwritten."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.quantizer import (
    ComposableQuantizer,
    QuantizationAnnotation,
    Quantizer,
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from inductor_quant.quantizer.quantizer import ANNOTATION_KEY
from quantizer_helpers import DYNAMIC, STATIC, annotate, assert_anchor, export, nodes_of, one, out_spec, sqnr

aten = torch.ops.aten
SYM = get_symmetric_quantization_config()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


class Recorder(Quantizer):
    """Annotates nothing (or, with `clobber`, overwrites every annotation); records calls."""

    def __init__(self, log, name, clobber=False):
        self.log, self.name, self.clobber = log, name, clobber

    def transform_for_annotation(self, model):
        self.log.append(("transform", self.name))
        return model

    def annotate(self, model):
        self.log.append(("annotate", self.name))
        if self.clobber:
            for node in model.graph.nodes:
                if ANNOTATION_KEY in node.meta:
                    node.meta[ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
        return model

    def validate(self, model):
        self.log.append(("validate", self.name))


def test_earlier_quantizer_wins_later_fills_the_rest():
    dynamic_fc = X86InductorQuantizer().set_module_name_qconfig("fc", DYNAMIC)
    static_all = X86InductorQuantizer().set_global(STATIC)
    composed = ComposableQuantizer([dynamic_fc, static_all])
    gm, _ = annotate(Net(), X, quantizer=composed)
    assert_anchor(one(gm, aten.linear.default), DYNAMIC, output=False)
    assert_anchor(one(gm, aten.conv2d.default), STATIC, output=False)
    assert out_spec(one(gm, aten.relu.default)) is None  # only mean() (float) consumes it
    assert composed.last_report.annotated == {"conv": 1, "linear": 1}


def test_xnnpack_then_x86_keeps_xnnpack_annotations():
    composed = ComposableQuantizer([XNNPACKQuantizer().set_global(SYM), X86InductorQuantizer().set_global(STATIC)])
    gm, _ = annotate(Net(), X, quantizer=composed)
    for layer in nodes_of(gm, aten.conv2d.default, aten.linear.default):
        assert layer.meta[ANNOTATION_KEY].input_qspec_map[layer.args[1]] is SYM.weight


def test_call_order_and_validate_all():
    log = []
    composed = ComposableQuantizer([Recorder(log, "a"), Recorder(log, "b")])
    annotate(Net(), X, quantizer=composed)
    assert log == [("annotate", "a"), ("annotate", "b"), ("validate", "a"), ("validate", "b")]
    log.clear()
    composed.transform_for_annotation(export(Net(), X))
    assert log == [("transform", "a"), ("transform", "b")]


def test_later_quantizer_overwriting_an_annotation_is_an_error():
    composed = ComposableQuantizer([X86InductorQuantizer().set_global(STATIC), Recorder([], "bad", clobber=True)])
    with pytest.raises(RuntimeError, match="Recorder changed the annotation of node .* X86InductorQuantizer"):
        annotate(Net(), X, quantizer=composed)


def test_rejects_non_quantizers():
    with pytest.raises(TypeError, match="Quantizer instances"):
        ComposableQuantizer([STATIC])


def test_composed_end_to_end_sqnr():
    torch.manual_seed(0)
    model = Net().eval()
    composed = ComposableQuantizer(
        [X86InductorQuantizer().set_module_name_qconfig("fc", DYNAMIC), X86InductorQuantizer().set_global(STATIC)]
    )
    prepared = prepare_pt2e(export(model, X), composed)
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(2, 3, 8, 8))
    converted = convert_pt2e(prepared)
    assert len(nodes_of(converted, torch.ops.quantized_decomposed.choose_qparams.tensor)) == 1
    with torch.no_grad():
        assert sqnr(model(X), converted(X)) >= 20
