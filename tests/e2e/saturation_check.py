"""Compile small quantized models and report how the compiled output compares with eager.

Run as a script, usually in a child process started with `ONEDNN_MAX_CPU_ISA=AVX2` so that
oneDNN dispatches its pre-VNNI kernels on any CPU (test_cpu_kinds.py). Prints one JSON line:
the CPU facts, and per case: max |eager - compiled|, one output quantization step, the oneDNN
int8 calls in the generated code, the layers our passes left unfused and the warnings raised.

    python tests/e2e/saturation_check.py conv:8bit linear:auto
"""

from __future__ import annotations

import json
import sys
import warnings

import torch
from torch._inductor.utils import run_and_get_code

from inductor_quant import generated_code
import inductor_quant
import inductor_quant.passes as iq_passes
from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

def _synthetic(make_layer, shape):
    """A layer fed positive activations over the full range: the case that saturates without VNNI."""
    def build():
        g = torch.Generator().manual_seed(0)
        batches = [torch.rand(*shape, generator=g) * 4 for _ in range(5)]
        return make_layer().eval(), batches, batches

    return build


def _fashion():
    """The trained Fashion-MNIST CNN on 1,000 real test images (calibrated on training images)."""
    from inductor_quant.benchmarks.accuracy import fashion_mnist as fm

    test_x, _ = fm.load("test", 1000)
    train_x, _ = fm.load("train", 1000)
    return fm.pretrained(), list(train_x.split(100)), list(test_x.split(100))


MODELS = {
    "conv": _synthetic(lambda: torch.nn.Conv2d(64, 64, 3, padding=1), (1, 64, 12, 12)),
    "linear": _synthetic(lambda: torch.nn.Linear(256, 256), (8, 256)),
    "fashion": _fashion,
}
REDUCE_RANGE = {"8bit": False, "7bit": True, "auto": "auto"}


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose top-1 (argmax over the last dim) agrees."""
    return float((a.flatten(0, -2).argmax(-1) == b.flatten(0, -2).argmax(-1)).float().mean())


def run_case(model_name: str, bits: str) -> dict:
    torch.manual_seed(0)
    model, calibration, inputs = MODELS[model_name]()
    config = get_default_x86_inductor_quantization_config(reduce_range=REDUCE_RANGE[bits])
    converted = inductor_quant.quantize(model, (inputs[0],), calibration,
                                        quantizer=X86InductorQuantizer().set_global(config))
    torch._dynamo.reset()
    iq_passes.reset_stats()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), \
            torch._inductor.config.patch(freezing=True):
        warnings.simplefilter("always")
        fp32 = torch.cat([model(x) for x in inputs])
        eager = torch.cat([converted(x) for x in inputs])
        compiled_model = torch.compile(converted)
        first, codes = run_and_get_code(compiled_model, inputs[0])
        compiled = torch.cat([first] + [compiled_model(x) for x in inputs[1:]])
    return {
        "max_diff": float((eager - compiled).abs().max()),
        "step": float((eager.max() - eager.min()) / 255),
        "sqnr_compiled_vs_eager": _sqnr(eager, compiled),
        "top1_compiled_vs_eager": _agree(eager, compiled),
        "sqnr_eager_vs_fp32": _sqnr(fp32, eager),
        "sqnr_compiled_vs_fp32": _sqnr(fp32, compiled),
        "top1_compiled_vs_fp32": _agree(fp32, compiled),
        "act_quant_max": config.input_activation.quant_max,
        "weight_range": [config.weight.quant_min, config.weight.quant_max],
        "onednn_int8_calls": sum(generated_code.onednn_int8_calls("\n".join(codes)).values()),
        "weight_dequant_per_call": "dequantize_per_channel" in "\n".join(codes),
        "unfused": [list(u) for u in iq_passes.stats()["unfused"]],
        "warnings": [str(w.message) for w in caught if "inductor_quant" in str(w.message)],
    }


def main(cases: list[str]) -> None:
    info = inductor_quant.cpu_info()
    from inductor_quant.kernels.probe import int8_pair_sums_saturate

    out = {"cpu": info.as_dict(), "saturates": int8_pair_sums_saturate(), "cases": {}}
    for case in cases:
        out["cases"][case] = run_case(*case.split(":"))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
