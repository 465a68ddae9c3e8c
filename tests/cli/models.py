"""Factories for `inductor-quant report --model module:factory` tests."""

import dataclasses

import torch


def small_cnn():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 4 * 4, 10))
    return m.eval(), (torch.randn(2, 3, 8, 8),)


def axis1_quantizer():
    """Weights quantized per channel on axis 1: a valid Q/DQ graph oneDNN cannot take (it
    needs output-channel scales), so the conv must stay an unfused dq -> fp32 conv -> q."""
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    cfg = get_default_x86_inductor_quantization_config()
    return X86InductorQuantizer().set_global(dataclasses.replace(cfg, weight=dataclasses.replace(cfg.weight, ch_axis=1)))


def unfusable_cnn():
    from inductor_quant import quantize

    model, inputs = small_cnn()
    converted = quantize(model, inputs, [inputs], quantizer=axis1_quantizer())
    return converted, inputs
