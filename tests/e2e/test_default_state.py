"""The state a user gets by default: torch's built-in quantization fusions on (torch 2.13), then
convert_pt2e installs our passes, which switches the built-ins off until uninstall().

A form we refuse must stay refused: weights quantized per channel on axis 1 are valid Q/DQ that
oneDNN cannot take (it needs output-channel scales); the built-ins would fuse them anyway, with
wrong outputs. With our passes installed the conv stays dq -> fp32 conv -> q and is reported.
"""

import dataclasses

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import inductor_quant as iq
import inductor_quant.passes as iq_passes
from inductor_quant import generated_code

qd = torch.ops.quantized_decomposed


def _axis1_quantizer():
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    cfg = get_default_x86_inductor_quantization_config()
    axis1 = dataclasses.replace(cfg, weight=dataclasses.replace(cfg.weight, ch_axis=1))
    return X86InductorQuantizer().set_global(axis1)


def test_axis1_weights_unfused_and_correct_by_default(torch_default_state):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    converted = iq.quantize(model, (x,), [(x,)], quantizer=_axis1_quantizer())  # installs our passes
    assert iq_passes.is_installed() and not iq_passes.builtin_fusions_enabled()
    assert any(n.target is qd.dequantize_per_channel.default and n.args[3] == 1 for n in converted.graph.nodes)
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with torch.no_grad():
        ref = converted(x)
        out, codes = run_and_get_code(torch.compile(converted), x)
    unfused = iq_passes.stats()["unfused"]
    assert {u[0] for u in unfused} == {"conv", "linear"} and len(unfused) == 3, unfused
    assert all("axis other than 0" in u[2] for u in unfused), unfused
    assert not generated_code.onednn_int8_calls("\n".join(codes))  # nothing fused, by us or by the built-ins
    # one quantization step of the coarsest activation quantizer (a flipped rounding at most)
    step = max(float(n.args[1]) for n in converted.graph.nodes if n.target is qd.quantize_per_tensor.default)
    assert (out - ref).abs().max() <= step, ((out - ref).abs().max(), step)
    iq_passes.uninstall()
    assert iq_passes.builtin_fusions_enabled()  # restored: torch's default before install
