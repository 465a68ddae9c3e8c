"""The real flow on small models: every quantized conv/linear runs as a oneDNN int8 op.

Small stand-ins for the acceptance models (ResNet-style CNN with residual blocks, BERT-style
encoder block); the full-size ones are in test_acceptance.py (slow).
"""


import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from inductor_quant import generated_code
import inductor_quant as iq
import inductor_quant.passes as iq_passes
from inductor_quant.kernels.cpu import cpu_info


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()  # reused, as in torchvision's BasicBlock

    def forward(self, x):
        y = self.relu(self.b1(self.c1(x)))
        return self.relu(self.b2(self.c2(y)) + x)


class SmallResNet(nn.Module):
    convs, linears = 5, 1

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    @staticmethod
    def example():
        return torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)


class SmallEncoder(nn.Module):
    convs, linears = 0, 4

    def __init__(self, d=32):
        super().__init__()
        self.qkv, self.o, self.f1, self.f2 = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(-1, -2) / 5.66, -1) @ v
        x = self.n1(x + self.o(a))
        return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))

    @staticmethod
    def example():
        return torch.randn(2, 8, 32)


class SplitQKVEncoder(SmallEncoder):
    """Separate q, k, v linears (as in BERT): under dynamic quantization one choose_qparams ->
    quantize.tensor -> dequantize.tensor chain feeds all three; promotion gives each its own dq."""
    linears = 6

    def __init__(self, d=32):
        super().__init__(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        del self.qkv

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / 5.66, -1) @ v
        x = self.n1(x + self.o(a))
        return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))


def sqnr(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-20)))


def onednn_calls(code, op):
    return generated_code.count(code, op)


@pytest.fixture(scope="module", params=[SmallResNet, SmallEncoder], ids=["resnet", "encoder"])
def converted(request):
    torch.manual_seed(0)
    cls = request.param
    x = cls.example()
    calib = [(cls.example(),) for _ in range(4)]
    return cls, iq.quantize(cls().eval(), (x,), calib), x


MATRIX = {"py-fp32": (False, False), "py-bf16": (False, True), "cpp-fp32": (True, False)}


@pytest.mark.parametrize("mode", MATRIX)
def test_fully_fused(converted, mode):
    cls, model, x = converted
    cpp_wrapper, bf16 = MATRIX[mode]
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad(), torch._inductor.config.patch(cpp_wrapper=cpp_wrapper), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref = model(x)
        out, codes = run_and_get_code(torch.compile(model), x)
    code, stats = "\n".join(codes), iq_passes.stats()
    assert [u for u in stats["unfused"] if u[0] != "pool"] == [], stats  # avg pools stay fp32, reported
    prepacks = lambda kind: sum(c for k, c in stats["fused"].items() if k.startswith(f"{kind}.prepack"))  # noqa: E731
    assert prepacks("qconv") == cls.convs and prepacks("qlinear") == cls.linears, stats
    assert onednn_calls(code, "qconv_pointwise") + onednn_calls(code, "qconv2d_pointwise") == cls.convs
    assert onednn_calls(code, "qlinear_pointwise") == cls.linears
    # compiled vs eager converted model: requantized layers may flip a rounding step, which
    # propagates; bf16 also rounds differently
    assert sqnr(ref, out) > (20 if bf16 else 30), sqnr(ref, out)


def _quantizer(kind):
    from inductor_quant.quantizer import configs
    from inductor_quant.quantizer.x86_inductor_quantizer import X86InductorQuantizer
    from inductor_quant.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    if kind == "dynamic":
        return X86InductorQuantizer().set_global(configs.get_default_x86_inductor_quantization_config(is_dynamic=True))
    return XNNPACKQuantizer().set_global(configs.get_symmetric_quantization_config())


@pytest.mark.parametrize("kind, cls", [("dynamic", SmallEncoder), ("dynamic", SplitQKVEncoder),
                                       ("symmetric", SmallResNet), ("symmetric", SmallEncoder)],
                         ids=["dynamic-encoder", "dynamic-split-qkv", "s8-resnet", "s8-encoder"])
def test_other_quantizers_fully_fused(kind, cls):
    """Dynamic quantization (runtime activation qparams) and int8-symmetric activations (the
    XNNPACK-style config: convs get an exact s8->u8 shift) reach our passes too; the latter
    (8-bit activations and weights) fuses only where oneDNN has VNNI."""
    torch.manual_seed(0)
    x = cls.example()
    model = iq.quantize(cls().eval(), (x,), [(cls.example(),) for _ in range(2)], quantizer=_quantizer(kind))
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        ref = model(x)
        out, codes = run_and_get_code(torch.compile(model), x)
    code, stats = "\n".join(codes), iq_passes.stats()
    assert sqnr(ref, out) > 30, sqnr(ref, out)
    layers = [u for u in stats["unfused"] if u[0] != "pool"]  # avg pools stay fp32, reported
    if kind == "symmetric" and not cpu_info().vnni:
        # 8-bit activations x 8-bit weights: without VNNI every layer stays fp32, each reported
        assert len(layers) == cls.convs + cls.linears and all("without VNNI" in r for *_, r in layers), stats
        assert onednn_calls(code, "qconv_pointwise") + onednn_calls(code, "qlinear_pointwise") == 0
        return
    assert layers == [], stats
    fused = lambda kind_: sum(c for k, c in stats["fused"].items() if k.startswith(kind_))  # noqa: E731
    assert fused("qconv.prepack") == cls.convs and fused(("qlinear.prepack", "qlinear.dynamic")) == cls.linears, stats
    assert onednn_calls(code, "qconv_pointwise") + onednn_calls(code, "qconv2d_pointwise") == cls.convs
    # q, k, v on one dynamically quantized input run as one GEMM (passes/graph_rewrites.py)
    merged = stats["fused"].get("merge.sibling_linears", 0)
    assert merged == (kind == "dynamic" and cls is SplitQKVEncoder), stats
    assert onednn_calls(code, "qlinear_pointwise") == cls.linears - 2 * merged


@pytest.mark.parametrize("cls", [SmallResNet, SmallEncoder], ids=["resnet", "encoder"])
def test_dynamic_batch_export(cls):
    """torch.export.Dim on the batch, then torch.compile(dynamic=True): fused, batch 1 included."""
    torch.manual_seed(0)
    x = torch.cat([cls.example()] * 2)
    batch = torch.export.Dim("batch", min=1, max=16)
    model = iq.quantize(cls().eval(), (x,), [(x,)], dynamic_shapes=({0: batch},))
    torch._dynamo.reset()
    iq_passes.reset_stats()
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        # the CNN exports with batch >= 2 (export narrows the Dim for it); the encoder takes 1
        for n in ((4, 2, 3) if cls is SmallResNet else (4, 1, 3)):
            xn = torch.cat([cls.example() for _ in range(n)])
            if cls is SmallResNet:
                xn = xn.contiguous(memory_format=torch.channels_last)
            assert sqnr(model(xn), compiled(xn)) > 30
    stats = iq_passes.stats()
    assert [u for u in stats["unfused"] if u[0] != "pool"] == [], stats
    assert sum(c for k, c in stats["fused"].items() if ".prepack" in k) >= cls.convs + cls.linears
