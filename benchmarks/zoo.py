"""The benchmark model zoo: architectures defined here, random weights (enough for speed).

Each entry builds `(model, example_inputs)` for a batch size. The CNNs are written the way
real code is (torchvision-style ResNet reusing one `self.relu` per block, MobileNetV2 with
ReLU6 and depthwise convs), because that is what quantizers have to cope with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)  # one module, called three times (as torchvision does)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> ResNet:
    return ResNet((3, 4, 6, 3))


# ----------------------------------------------------------------------------- MobileNetV2


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [ConvBNAct(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden), ConvBNAct(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- Transformers


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, mask=None):
        b, s, h = x.shape

        def split(t):
            return t.view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        ctx = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, s, h)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    """Post-norm (BERT) or pre-norm (ViT) transformer layer: 4 attention + 2 MLP linears."""

    def __init__(self, hidden: int, heads: int, mlp: int, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = SelfAttention(hidden, heads)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.intermediate, self.output = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)
        self.dropout = nn.Dropout(0.1)

    def mlp(self, x):
        return self.dropout(self.output(F.gelu(self.intermediate(x))))

    def forward(self, x, mask=None):
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.norm1(x), mask))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.dropout(self.attention(x, mask)))
        return self.norm2(x + self.mlp(x))


class BertEncoder(nn.Module):
    """BERT-base-style: embeddings + N post-norm layers. 6 linears per layer (72 for N=12)."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, mlp: int = 3072,
                 vocab: int = 30522, max_len: int = 512):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, mlp, pre_norm=False) for _ in range(layers))

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.word(input_ids) + self.position(pos))
        for layer in self.layers:
            x = layer(x)
        return x


class ViT(nn.Module):
    """ViT-B/16-style: patch conv, class token, N pre-norm layers, linear head."""

    def __init__(self, image: int = 224, patch: int = 16, layers: int = 12, hidden: int = 768, heads: int = 12,
                 mlp: int = 3072, num_classes: int = 1000):
        super().__init__()
        self.patch = nn.Conv2d(3, hidden, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, hidden) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, mlp, pre_norm=True) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[int], tuple]
    batch_sizes: tuple[int, ...]
    channels_last: bool = False
    convs: int = 0      # quantizable conv / linear layers, for fusion checks
    linears: int = 0
    transformer: bool = False  # peers use their transformer presets


def _images(size: int = 224) -> Callable[[int], tuple]:
    return lambda bs: (torch.randn(bs, 3, size, size),)


def _tokens(seq: int = 128, vocab: int = 30522) -> Callable[[int], tuple]:
    return lambda bs: (torch.randint(0, vocab, (bs, seq)),)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("resnet50", resnet50, _images(), (1, 16), channels_last=True, convs=53, linears=1),
        ZooEntry("mobilenet_v2", MobileNetV2, _images(), (1, 16), channels_last=True, convs=52, linears=1),
        ZooEntry("vit_b16", ViT, _images(), (1, 16), convs=1, linears=12 * 6 + 1, transformer=True),
        ZooEntry("bert_base", BertEncoder, _tokens(), (1, 8), linears=72, transformer=True),
        # tiny variants for smoke runs (`bench --quick`) and tests: same code paths, seconds to compile
        ZooEntry("resnet_tiny", lambda: ResNet((1, 1, 1, 1), num_classes=10, width=8), _images(32), (2,),
                 channels_last=True, convs=17, linears=1),
        ZooEntry("bert_tiny", lambda: BertEncoder(layers=2, hidden=64, heads=4, mlp=128, vocab=100, max_len=64),
                 _tokens(16, 100), (2,), linears=12, transformer=True),
    )
}
QUICK = ("resnet_tiny", "bert_tiny")


def build(name: str, batch_size: int, seed: int = 0) -> tuple[nn.Module, tuple]:
    """Model in eval mode with random weights and BN statistics, plus example inputs."""
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = entry.build().eval()
    for m in model.modules():  # non-trivial BN statistics so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    inputs = entry.make_inputs(batch_size)
    if entry.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = tuple(t.contiguous(memory_format=torch.channels_last) for t in inputs)
    return model, inputs
