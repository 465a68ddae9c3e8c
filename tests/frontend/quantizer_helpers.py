"""Shared helpers for the quantizer tests: export tiny models, read annotations back."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from inductor_quant.quantizer import (
    QuantizationAnnotation,
    SharedQuantizationSpec,
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)
from inductor_quant.quantizer.quantizer import ANNOTATION_KEY

STATIC = get_default_x86_inductor_quantization_config()
DYNAMIC = get_default_x86_inductor_quantization_config(is_dynamic=True)
QAT = get_default_x86_inductor_quantization_config(is_qat=True)


def export(model: torch.nn.Module, *args: torch.Tensor) -> GraphModule:
    return torch.export.export(model, tuple(args)).module()


def annotate(model: torch.nn.Module, *args: torch.Tensor, quantizer=None, config=STATIC) -> tuple[GraphModule, object]:
    """Export `model` and annotate it (default: X86InductorQuantizer with a global config)."""
    gm = export(model, *args)
    if quantizer is None:
        quantizer = X86InductorQuantizer().set_global(config)
    quantizer.annotate(gm)
    quantizer.validate(gm)
    return gm, quantizer


def nodes_of(gm: GraphModule, *targets) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


def one(gm: GraphModule, target) -> Node:
    found = nodes_of(gm, target)
    assert len(found) == 1, f"expected one {target}, found {[n.name for n in found]}"
    return found[0]


def ann(node: Node) -> Optional[QuantizationAnnotation]:
    return node.meta.get(ANNOTATION_KEY)


def edge_spec(node: Node, producer: Node):
    a = ann(node)
    return None if a is None else a.input_qspec_map.get(producer)


def out_spec(node: Node):
    a = ann(node)
    return None if a is None else a.output_qspec


def assert_float(node: Node) -> None:
    a = ann(node)
    assert a is None or (not a.input_qspec_map and a.output_qspec is None), f"{node.name} carries specs: {a}"


def assert_anchor(node: Node, config=STATIC, *, output: bool) -> None:
    """conv/linear recipe: activation + weight edges, bias float, output spec iff `output`."""
    x, w = node.args[0], node.args[1]
    assert edge_spec(node, x) is config.input_activation
    assert edge_spec(node, w) is config.weight
    if len(node.args) > 2 and isinstance(node.args[2], Node):
        assert node.args[2] not in ann(node).input_qspec_map, "bias must stay fp32"
    assert (out_spec(node) is config.output_activation) if output else out_spec(node) is None
    assert ann(node)._annotated


def assert_shares_input(node: Node, producer: Node) -> None:
    """int8 propagation: input edge shares the producer's observer, output shares the edge."""
    assert edge_spec(node, producer) == SharedQuantizationSpec(producer)
    assert out_spec(node) == SharedQuantizationSpec((producer, node))


def sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    noise = (ref - x).pow(2).mean()
    return float(10 * torch.log10(ref.pow(2).mean() / noise.clamp_min(1e-20)))


# ---- models shared by several test files ----
class Bottleneck(nn.Module):
    """torchvision's Bottleneck: ONE self.relu module called three times."""

    def __init__(self, cin=4, cout=8, stride=2):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout // 2, 1, bias=False), nn.BatchNorm2d(cout // 2)
        self.conv2, self.bn2 = nn.Conv2d(cout // 2, cout // 2, 3, stride, 1, bias=False), nn.BatchNorm2d(cout // 2)
        self.conv3, self.bn3 = nn.Conv2d(cout // 2, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.downsample(x)
        return self.relu(out)


class SameConv(nn.Conv2d):
    """A conv module of the kind real models define: own forward, F.pad 'same' padding."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        ph, pw = max(kh - 1, 0), max(kw - 1, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
