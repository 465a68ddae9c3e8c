"""Shared pieces for the flow tests: the tutorial's BackendQuantizer, tiny models, SQNR.

`BackendQuantizer` follows "How to Write a Quantizer": it matches ATen ops and uses every
spec kind — plain specs on conv/linear, a SharedQuantizationSpec for add's second input,
FixedQParams (1/256, 0) for sigmoid and a DerivedQuantizationSpec for the int32 bias.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

from inductor_quant.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

aten = torch.ops.aten
ANN = "quantization_annotation"
CONV_LINEAR = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.linear.default)


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().float(), out.detach().float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-20)))


def act_spec(dtype=torch.int8, ctr=None) -> QuantizationSpec:
    qmin, qmax = (-128, 127) if dtype == torch.int8 else (0, 255)
    return QuantizationSpec(
        dtype=dtype, quant_min=qmin, quant_max=qmax, qscheme=torch.per_tensor_affine,
        # literally as the annotation tutorial writes it (eps=2-12 == -10): must still work
        observer_or_fake_quant_ctr=ctr or HistogramObserver.with_args(eps=2-12),
    )


def weight_spec(per_channel=False) -> QuantizationSpec:
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0 if per_channel else None,
        observer_or_fake_quant_ctr=(PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(eps=2**-12),
    )


SIGMOID_SPEC = FixedQParamsQuantizationSpec(
    dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine, scale=1.0 / 256.0, zero_point=0
)


def derive_bias_qparams(obs_or_fqs):
    assert len(obs_or_fqs) == 2
    act_scale, _ = obs_or_fqs[0].calculate_qparams()
    weight_scale, _ = obs_or_fqs[1].calculate_qparams()
    return (act_scale * weight_scale).to(torch.float32).reshape(-1), torch.zeros(weight_scale.numel(), dtype=torch.int32)


class BackendQuantizer(Quantizer):
    """The tutorial's quantizer, matching ATen ops. `derived_bias` quantizes bias to int32."""

    def __init__(self, act_dtype=torch.int8, per_channel=False, derived_bias=True, act_ctr=None):
        self.act = act_spec(act_dtype, act_ctr)
        self.weight = weight_spec(per_channel)
        self.derived_bias = derived_bias

    def annotate(self, gm):
        for n in gm.graph.nodes:
            if n.op != "call_function":
                continue
            if n.target in CONV_LINEAR:
                x, w = n.args[0], n.args[1]
                b = n.args[2] if len(n.args) > 2 else None
                qmap = {x: self.act, w: self.weight}
                if b is not None and self.derived_bias:
                    qmap[b] = DerivedQuantizationSpec(
                        derived_from=[(x, n), (w, n)], derive_qparams_fn=derive_bias_qparams,
                        dtype=torch.int32, quant_min=-(2**31), quant_max=2**31 - 1,
                        qscheme=torch.per_tensor_symmetric,
                    )
                n.meta[ANN] = QuantizationAnnotation(input_qspec_map=qmap, output_qspec=self.act, _annotated=True)
            elif n.target == aten.add.Tensor and all(isinstance(a, torch.fx.Node) for a in n.args[:2]):
                a0, a1 = n.args[:2]
                n.meta[ANN] = QuantizationAnnotation(
                    input_qspec_map={a0: self.act, a1: SharedQuantizationSpec((a0, n))},
                    output_qspec=self.act, _annotated=True,
                )
            elif n.target == aten.sigmoid.default:
                n.meta[ANN] = QuantizationAnnotation(
                    input_qspec_map={n.args[0]: SIGMOID_SPEC}, output_qspec=SIGMOID_SPEC, _annotated=True
                )
        return gm

    def validate(self, gm):
        return None


class ConvModel(nn.Module):
    """conv -> relu -> conv (+ residual add) -> sigmoid: every spec kind appears."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.conv1(x))
        return torch.sigmoid(self.conv2(y) + y)


class LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ConvBNModel(nn.Module):
    """conv+bn+relu -> pool -> dropout -> linear: the QAT tutorial's shape, tiny."""

    def __init__(self, dims=2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.conv, self.bn, self.relu = conv(3, 8, 3, padding=1), bn(8), nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)
        self.dims = dims

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        y = y.mean(dim=tuple(range(2, 2 + self.dims)))
        return self.fc(self.dropout(y))


class BasicBlock(nn.Module):
    """torchvision-style: one `self.relu` called twice, residual add."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer1(x)), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def export(model: nn.Module, *args):
    return torch.export.export(model, args).module()


def calibrate(prepared, batches):
    with torch.no_grad():
        for b in batches:
            prepared(*(b if isinstance(b, tuple) else (b,)))


def observers(gm):
    from inductor_quant.observers import is_observer

    return {name: m for name, m in gm.named_modules() if is_observer(m)}


def call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def attr(gm, target: str):
    """The tensor a get_attr target names (dotted paths included)."""
    from inductor_quant.graph_utils import fetch_attr

    return fetch_attr(gm, target)
