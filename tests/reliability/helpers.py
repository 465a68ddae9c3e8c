"""Tiny models, the PTQ flow in one call, and reading what a compiled model runs."""

from __future__ import annotations


import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from inductor_quant import convert_pt2e, prepare_pt2e
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

qd = torch.ops.quantized_decomposed

from inductor_quant.generated_code import count as onednn_calls  # noqa: F401  (re-exported for the tests)
from inductor_quant.generated_code import float_compute_calls  # noqa: F401


def x86_quantizer(**config):
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(**config))


def ptq(model: nn.Module, example: tuple, calibration=None, quantizer=None, dynamic_shapes=None):
    """export -> prepare -> calibrate (default: the example plus one random batch) -> convert."""
    gm = torch.export.export(model, example, dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(gm, quantizer or x86_quantizer())
    batches = calibration if calibration is not None else [example, tuple(torch.randn_like(t) for t in example)]
    with torch.no_grad():
        for b in batches:
            prepared(*b)
    return convert_pt2e(prepared)


def compile_frozen(model, *inputs, **compile_kwargs):
    """torch.compile with freezing under no_grad; returns (compiled, output, generated code)."""
    torch._dynamo.reset()
    compiled = torch.compile(model, **compile_kwargs)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        out, codes = run_and_get_code(compiled, *inputs)
    return compiled, out, "\n".join(codes)


def quant_step(model: torch.fx.GraphModule) -> float:
    """The largest activation scale in a converted model: 'one quantization step' of its outputs."""
    scales = [n.args[1] for n in model.graph.nodes if n.target == qd.quantize_per_tensor.default]
    return max(scales)


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().float(), out.detach().float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-20)))


class ConvLinear(nn.Module):
    """conv -> relu -> global pool -> linear: the smallest model with both fused op families."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
