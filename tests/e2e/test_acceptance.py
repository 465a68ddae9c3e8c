"""Issue 3 acceptance (slow): ResNet-50 and BERT-base architectures, random weights, fully fused.

Built-ins off (conftest). ResNet-50 1x3x224x224 channels_last: 53 convs as qconv and the fc as
qlinear, in the Python wrapper, the C++ wrapper and under bf16 autocast. BERT-base encoder
(12 layers, hidden 768, seq 128): all 72 linears as qlinear. stats() reports exactly those.
"""


import pytest
import torch
from torch._inductor.utils import run_and_get_code

from inductor_quant import generated_code
import inductor_quant as iq
import inductor_quant.passes as iq_passes

pytestmark = pytest.mark.slow


def _calls(code, *ops):
    return sum(generated_code.count(code, op) for op in ops)


def sqnr(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-20)))


def _prepacks(stats, kind):
    return sum(c for k, c in stats["fused"].items() if k.startswith(f"{kind}.prepack"))


def _run(model, x, cpp_wrapper=False, bf16=False):
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad(), torch._inductor.config.patch(cpp_wrapper=cpp_wrapper), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref = model(x)
        out, codes = run_and_get_code(torch.compile(model), x)
    return ref, out, "\n".join(codes), iq_passes.stats()


@pytest.fixture(scope="module")
def resnet50():
    from benchmarks.zoo import resnet50

    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    return iq.quantize(resnet50().eval(), (x,), [(x,)]), x


@pytest.mark.parametrize("mode", ["py-fp32", "cpp-fp32", "py-bf16"])
def test_resnet50_fully_fused(resnet50, mode):
    model, x = resnet50
    ref, out, code, stats = _run(model, x, cpp_wrapper=mode.startswith("cpp"), bf16=mode.endswith("bf16"))
    assert [u for u in stats["unfused"] if u[0] != "pool"] == [], stats  # avg pools stay fp32, reported
    assert _prepacks(stats, "qconv") == 53 and _prepacks(stats, "qlinear") == 1, stats
    assert _calls(code, "qconv_pointwise", "qconv2d_pointwise") == 53 and _calls(code, "qlinear_pointwise") == 1
    # 53 requantized layers: an occasional one-step rounding flip propagates; compare by SQNR
    assert sqnr(ref, out) > (20 if mode.endswith("bf16") else 25), sqnr(ref, out)


def test_bert_base_fully_fused():
    from benchmarks.zoo import BertEncoder

    torch.manual_seed(0)
    ids = torch.randint(0, 30522, (1, 128))
    model = iq.quantize(BertEncoder().eval(), (ids,), [(ids,)])
    ref, out, code, stats = _run(model, ids)
    assert [u for u in stats["unfused"] if u[0] != "pool"] == [], stats  # avg pools stay fp32, reported
    assert _prepacks(stats, "qlinear") == 72, stats
    assert _calls(code, "qlinear_pointwise") == 72
    assert sqnr(ref, out) > 25, sqnr(ref, out)
