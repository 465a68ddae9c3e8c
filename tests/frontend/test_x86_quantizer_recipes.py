"""X86InductorQuantizer recipes: one small model per pattern, asserting edge/node specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inductor_quant.quantizer import X86InductorQuantizer
from quantizer_helpers import (
    STATIC, Bottleneck, SameConv, annotate, assert_anchor, assert_float, assert_shares_input, edge_spec, nodes_of, one, out_spec,
)

aten = torch.ops.aten

# (post-op module, aten op it exports to, name in pattern ids, oneDNN takes it after conv?, after linear?)
UNARY = [
    (nn.ReLU, aten.relu.default, "relu", True, True),
    (nn.ReLU6, aten.hardtanh.default, "hardtanh", True, True),
    (lambda: nn.Hardtanh(-1.0, 1.0), aten.hardtanh.default, "hardtanh", True, True),
    (nn.Hardswish, aten.hardswish.default, "hardswish", True, True),
    (nn.SiLU, aten.silu.default, "silu", True, True),
    (nn.GELU, aten.gelu.default, "gelu", False, True),
    (lambda: nn.GELU(approximate="tanh"), aten.gelu.default, "gelu", False, True),
    (nn.LeakyReLU, aten.leaky_relu.default, "leaky_relu", False, True),
    (nn.Tanh, aten.tanh.default, "tanh", False, True),
    (nn.Sigmoid, aten.sigmoid.default, "sigmoid", False, False),
]
UNARY_IDS = ["relu", "relu6", "hardtanh", "hardswish", "silu", "gelu", "gelu_tanh", "leaky_relu", "tanh", "sigmoid"]


class Chain(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("post, op, name, conv_ok, _", UNARY, ids=UNARY_IDS)
def test_conv2d_unary_one_qdq_around_chain(post, op, name, conv_ok, _):
    gm, q = annotate(Chain(nn.Conv2d(3, 4, 3), post(), nn.Conv2d(4, 4, 1)), torch.randn(1, 3, 8, 8))
    (conv, consumer), act = nodes_of(gm, aten.conv2d.default), one(gm, op)
    assert_anchor(conv, output=False)
    assert out_spec(act) is STATIC.output_activation and not edge_spec(act, conv)
    assert edge_spec(consumer, act) is STATIC.input_activation  # == output spec: one observer
    assert_anchor(consumer, output=False)  # feeds the model output only: stays fp32
    assert q.last_report.patterns == {f"conv2d.{name}": 1, "conv2d": 1}
    assert q.last_report.float_outputs == 1
    assert q.last_report.not_onednn_fusable == ({} if conv_ok else {f"conv2d.{name}": 1})


@pytest.mark.parametrize("post, name, fusable", [(nn.ReLU, "relu", True), (nn.Hardswish, "hardswish", False),
                                                (nn.SiLU, "silu", False)], ids=["relu", "hardswish", "silu"])
def test_conv1d_reports_what_its_kernel_takes(post, name, fusable):
    """oneDNN's 1-D int8 conv takes relu only (kernels/capabilities.py, checked against the kernel)."""
    gm, q = annotate(Chain(nn.Conv1d(3, 4, 3), post(), nn.Conv1d(4, 4, 1)), torch.randn(1, 3, 16))
    assert q.last_report.patterns == {f"conv1d.{name}": 1, "conv1d": 1}
    assert q.last_report.not_onednn_fusable == ({} if fusable else {f"conv1d.{name}": 1})


@pytest.mark.parametrize("post, op, name, _, linear_ok", UNARY, ids=UNARY_IDS)
@pytest.mark.parametrize("shape", [(2, 16), (2, 5, 16)], ids=["2d", "3d"])
def test_linear_unary(post, op, name, _, linear_ok, shape):
    gm, q = annotate(Chain(nn.Linear(16, 8), post(), nn.Linear(8, 4)), torch.randn(*shape))
    linear, act = nodes_of(gm, aten.linear.default)[0], one(gm, op)
    assert_anchor(linear, output=False)
    assert out_spec(act) is STATIC.output_activation
    assert q.last_report.patterns == {f"linear.{name}": 1, "linear": 1}
    assert bool(q.last_report.not_onednn_fusable) is not linear_ok


@pytest.mark.parametrize(
    "conv, shape, op",
    [
        (nn.Conv1d(3, 4, 3), (1, 3, 16), aten.conv1d.default),
        (nn.Conv2d(3, 4, 3, groups=1, dilation=2), (1, 3, 12, 12), aten.conv2d.default),
        (nn.Conv2d(4, 4, 3, groups=4, stride=2), (1, 4, 12, 12), aten.conv2d.default),
        (nn.Conv2d(3, 4, 3, padding="same", bias=False), (1, 3, 8, 8), aten.conv2d.padding),
        (nn.Conv3d(3, 4, 3), (1, 3, 6, 6, 6), aten.conv3d.default),
    ],
    ids=["conv1d", "dilated", "depthwise", "same_no_bias", "conv3d"],
)
def test_single_conv(conv, shape, op):
    gm, q = annotate(conv, torch.randn(*shape))
    assert_anchor(one(gm, op), output=False)  # the model output stays fp32: no q/dq round trip
    assert q.last_report.annotated["conv"] == q.last_report.present["conv"] == 1
    assert q.last_report.float_outputs == 1
    gm, _ = annotate(conv, torch.randn(*shape), quantizer=X86InductorQuantizer(keep_float_outputs=True).set_global(STATIC))
    assert_anchor(one(gm, op), output=True)


class ConvAdd(nn.Module):
    def __init__(self, swap: bool, relu: bool, residual: str):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.other = nn.Conv2d(4, 4, 1)
        self.tail = nn.Conv2d(4, 4, 1)
        self.swap, self.relu, self.residual = swap, relu, residual

    def forward(self, x):
        y = self.conv(x)
        r = {"input": x, "conv": self.other(x), "float_op": torch.sin(x)}[self.residual]
        z = r + y if self.swap else y + r
        return self.tail(F.relu(z) if self.relu else z)


@pytest.mark.parametrize("residual", ["input", "conv", "float_op"])
@pytest.mark.parametrize("relu", [False, True], ids=["add", "add_relu"])
@pytest.mark.parametrize("swap", [False, True], ids=["conv_first", "conv_second"])
def test_conv_add(swap, relu, residual):
    gm, q = annotate(ConvAdd(swap, relu, residual), torch.randn(1, 4, 8, 8))
    *convs, tail = nodes_of(gm, aten.conv2d.default)
    add = one(gm, aten.add.Tensor)
    fused = add.args[1] if swap else add.args[0]
    other = add.args[0] if swap else add.args[1]
    assert_anchor(fused, output=False)
    assert edge_spec(add, other) is STATIC.input_activation  # residual enters as dq(int8)
    assert edge_spec(add, fused) is None
    last = one(gm, aten.relu.default) if relu else add
    assert out_spec(last) is STATIC.output_activation
    if relu:
        assert out_spec(add) is None
    if residual == "conv":
        (downsample,) = [c for c in convs if c is not fused]
        assert_anchor(downsample, output=True)
    name = "conv2d.add.relu" if relu else "conv2d.add"
    assert q.last_report.patterns[name] == 1
    assert q.last_report.annotated["conv"] == len(convs) + 1


@pytest.mark.parametrize("relu", [False, True], ids=["add", "add_relu"])
@pytest.mark.parametrize("swap", [False, True], ids=["linear_first", "linear_second"])
def test_linear_add(swap, relu):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.drop, self.norm = nn.Dropout(0.1), nn.LayerNorm(8)

        def forward(self, x):
            y = self.drop(self.fc(x))
            z = x + y if swap else y + x
            return self.norm(torch.relu(z) if relu else z)

    gm, q = annotate(M().eval(), torch.randn(2, 3, 8))
    linear, add = one(gm, aten.linear.default), one(gm, aten.add.Tensor)
    x = [n for n in gm.graph.nodes if n.op == "placeholder"][0]
    assert_anchor(linear, output=False)
    assert edge_spec(add, x) is None  # linear residual stays fp32 (BERT accuracy)
    assert out_spec(add) is None and (not relu or out_spec(one(gm, aten.relu.default)) is None)  # LayerNorm: fp32
    assert q.last_report.patterns == {"linear.add.relu" if relu else "linear.add": 1}
    assert q.last_report.float_outputs == 1


def test_add_with_broadcast_or_scalar_is_not_a_binary_post_op():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.b = nn.Parameter(torch.randn(4, 1, 1))

        def forward(self, x):
            return self.conv(x) + self.b, self.conv(x) + 1.0

    gm, q = annotate(M(), torch.randn(1, 3, 8, 8))
    for conv in nodes_of(gm, aten.conv2d.default):
        assert_anchor(conv, output=False)
    for add in nodes_of(gm, aten.add.Tensor):
        assert_float(add)
    assert q.last_report.patterns == {"conv2d": 2}


def test_multi_user_conv_output_is_not_fused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y), y * 2

    gm, _ = annotate(M(), torch.randn(1, 3, 8, 8))
    assert_anchor(one(gm, aten.conv2d.default), output=False)
    assert_float(one(gm, aten.relu.default))


def test_reused_relu_residual_block():
    gm, q = annotate(Bottleneck().eval(), torch.randn(1, 4, 8, 8))
    convs = nodes_of(gm, aten.conv2d.default)
    assert len(convs) == 4
    for conv in convs:
        assert_anchor(conv, output=False)
    relu1, relu2, relu3 = nodes_of(gm, aten.relu_.default, aten.relu.default)
    assert out_spec(relu1) is out_spec(relu2) is STATIC.output_activation
    assert out_spec(relu3) is None  # block output is the model output: fp32
    assert q.last_report.patterns == {"conv2d.bn.relu": 2, "conv2d.bn.add.relu": 1, "conv2d.bn": 1}
    assert q.last_report.summary().startswith("convs 4/4 annotated")


def test_conv_subclass_with_own_forward_and_functional_conv():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = SameConv(3, 8, 3)
            self.dw = SameConv(8, 8, 3, groups=8)
            self.w = nn.Parameter(torch.randn(4, 8, 1, 1))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = F.silu(self.stem(x))
            x = F.relu6(self.dw(x))
            x = F.conv2d(x, self.w)
            return self.head(x.mean((2, 3)))

    gm, q = annotate(M(), torch.randn(1, 3, 8, 8))
    convs = nodes_of(gm, aten.conv2d.default)
    assert len(convs) == 3
    assert convs[0].args[0].target in (aten.pad.default, aten.constant_pad_nd.default)
    rep = q.last_report
    assert (rep.annotated["conv"], rep.present["conv"], rep.annotated["linear"], rep.present["linear"]) == (3, 3, 1, 1)
    assert rep.patterns == {"conv2d.silu": 1, "conv2d.hardtanh": 1, "conv2d": 1, "linear": 1}


def test_conv_transpose_stays_float_and_is_reported():
    gm, q = annotate(Chain(nn.ConvTranspose2d(3, 4, 2), nn.ReLU()), torch.randn(1, 3, 4, 4))
    for n in gm.graph.nodes:
        assert_float(n)
    assert q.last_report.present["conv_transpose"] == 1 and q.last_report.annotated["conv_transpose"] == 0
    assert "conv_transpose" in q.last_report.summary()


def test_int8_propagation_through_pool_cat_and_shape_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = torch.cat([F.max_pool2d(F.relu(self.a(x)), 2), F.avg_pool2d(self.b(x), 2)], 1)
            y = F.adaptive_avg_pool2d(y, 1)
            y = torch.flatten(y, 1).reshape(1, 8).view(1, 8)
            return self.fc(y.permute(1, 0).permute(1, 0))

    gm, q = annotate(M(), torch.randn(1, 3, 8, 8))
    relu, b = one(gm, aten.relu.default), nodes_of(gm, aten.conv2d.default)[1]
    maxpool, avgpool = one(gm, aten.max_pool2d.default), one(gm, aten.avg_pool2d.default)
    assert_shares_input(maxpool, relu)
    assert_shares_input(avgpool, b)
    cat = one(gm, aten.cat.default)
    assert_shares_input(cat, maxpool)
    assert edge_spec(cat, avgpool) == edge_spec(cat, maxpool).__class__((maxpool, cat))
    chain = [one(gm, aten.adaptive_avg_pool2d.default), one(gm, aten.flatten.using_ints),
             one(gm, aten.reshape.default), one(gm, aten.view.default), *nodes_of(gm, aten.permute.default)]
    producer = cat
    for node in chain:
        assert_shares_input(node, producer)
        producer = node
    linear = one(gm, aten.linear.default)
    assert_anchor(linear, output=False)
    assert q.last_report.patterns["maxpool2d"] == 1 and q.last_report.patterns["permute"] == 2


def test_isolated_pool_and_partly_float_cat_stay_float():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return F.max_pool2d(x, 2), torch.cat([self.conv(x), x], 1).flatten(1)

    gm, _ = annotate(M(), torch.randn(1, 3, 4, 4))
    for op in (aten.max_pool2d.default, aten.cat.default, aten.flatten.using_ints):
        assert_float(one(gm, op))


@pytest.mark.parametrize("enabled", [False, True])
def test_matmul_is_opt_in(enabled):
    class M(nn.Module):
        def forward(self, a, b):
            return torch.matmul(a, b), torch.bmm(a, b)

    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    quantizer = X86InductorQuantizer(quantize_matmul=enabled).set_global(STATIC)
    gm, _ = annotate(M(), a, b, quantizer=quantizer)
    for node in nodes_of(gm, aten.matmul.default, aten.bmm.default):
        if enabled:
            assert [edge_spec(node, x) for x in node.args] == [STATIC.input_activation] * 2
            assert out_spec(node) is None  # only the model output consumes it
        else:
            assert_float(node)


def test_already_annotated_nodes_are_left_alone():
    from inductor_quant.quantizer import QuantizationAnnotation
    from inductor_quant.quantizer.quantizer import ANNOTATION_KEY
    from quantizer_helpers import export

    gm = export(Chain(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    relu = one(gm, aten.relu.default)
    mine = QuantizationAnnotation(_annotated=True)
    relu.meta[ANNOTATION_KEY] = mine
    X86InductorQuantizer().set_global(STATIC).annotate(gm)
    assert relu.meta[ANNOTATION_KEY] is mine and mine.output_qspec is None
    assert_anchor(one(gm, aten.conv2d.default), output=False)  # chain stops before the taken relu


def test_weight_computed_from_inputs_stays_float_with_reason():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x, k):
            # weight standardization on a parameter is still a constant; an activation is not
            w = (self.w - self.w.mean()) / (self.w.std() + 1e-5)
            return F.linear(x, w), F.linear(x, k)

    gm, q = annotate(M(), torch.randn(2, 4), torch.randn(4, 4))
    standardized, activation = nodes_of(gm, aten.linear.default)
    assert_anchor(standardized, output=False)
    assert_float(activation)
    assert q.last_report.skipped == {activation.name: "weight is computed from graph inputs (not a constant)"}


def test_cat_of_the_same_tensor_twice():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.tail(torch.cat([y, y], 1))

    m = M()
    m.tail = nn.Conv2d(8, 2, 1)
    gm, _ = annotate(m, torch.randn(1, 3, 4, 4))
    conv, cat = nodes_of(gm, aten.conv2d.default)[0], one(gm, aten.cat.default)
    assert_shares_input(cat, conv)
    assert list(cat.meta["quantization_annotation"].input_qspec_map) == [conv]


def test_propagation_into_float_consumers_unwinds():
    """linear -> view -> permute -> float matmul (attention): no q/dq anywhere on that path."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            q = self.q(x).view(2, 3, 2, 4).permute(0, 2, 1, 3)
            k = self.k(x).view(2, 3, 2, 4).permute(0, 2, 3, 1)
            return torch.matmul(q, k).softmax(-1)

    gm, rep = annotate(M(), torch.randn(2, 3, 8))
    for node in nodes_of(gm, aten.view.default, aten.permute.default, aten.matmul.default):
        assert_float(node)
    for linear in nodes_of(gm, aten.linear.default):
        assert_anchor(linear, output=False)
    assert rep.last_report.patterns == {"linear": 2} and rep.last_report.float_outputs == 2

    # with matmul quantization on, the same path stays int8 end to end
    gm, rep = annotate(M(), torch.randn(2, 3, 8), quantizer=X86InductorQuantizer(quantize_matmul=True).set_global(STATIC))
    for linear in nodes_of(gm, aten.linear.default):
        assert_anchor(linear, output=True)
    assert rep.last_report.patterns == {"linear": 2, "view": 2, "permute": 2, "matmul": 1}


def test_dynamic_batch_export():
    from quantizer_helpers import X86InductorQuantizer as Q

    m = nn.Sequential(Bottleneck(), nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    ep = torch.export.export(m, (torch.randn(2, 4, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    gm = ep.module()
    q = Q().set_global(STATIC)
    q.annotate(gm)
    assert q.last_report.patterns == {"conv2d.bn.add.relu": 1, "conv2d.bn.relu": 2, "conv2d.bn": 1, "linear": 1, "flatten": 1}
