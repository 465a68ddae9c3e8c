"""X86InductorQuantizer: the recipe oneDNN int8 (via our Inductor passes) runs fastest.

    import inductor_quant.quantizer.x86_inductor_quantizer as xiq
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())

Annotates conv1d/2d/3d (+bn in QAT) and linear (2-D and N-D inputs) with unary post-ops
(relu, relu6/hardtanh, hardswish, silu, gelu, leaky_relu, tanh, sigmoid) or add / add+relu,
as one chain with one output q/dq (annotators.py has the recipe); conv_transpose stays float;
pools, cat and shape ops after a quantized producer stay int8 with shared qparams;
matmul/bmm only with `quantize_matmul=True`. Chain outputs that only float ops consume
(LayerNorm, softmax, the model output) stay fp32: no q/dq round trip is added for them.
"""

from __future__ import annotations

import operator

import torch

from .annotating_quantizer import AnnotatingQuantizer
from .configs import get_default_x86_inductor_quantization_config, get_x86_inductor_linear_dynamic_fp16_config

MATMUL_FUNCTIONS = (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm, operator.matmul)

__all__ = ["X86InductorQuantizer", "get_default_x86_inductor_quantization_config",
           "get_x86_inductor_linear_dynamic_fp16_config"]


class X86InductorQuantizer(AnnotatingQuantizer):
    __doc__ = (AnnotatingQuantizer.__doc__ or "") + (
        "\n    `quantize_matmul=True` also quantizes matmul/bmm operands and output."
        "\n    `keep_float_outputs=True` keeps the output q/dq of chains only float ops consume.\n"
    )

    annotator_order = (
        "conv.add.relu",
        "conv.add",
        "conv.unary",
        "conv",
        "linear.add.relu",
        "linear.add",
        "linear.unary",
        "linear",
        "matmul",
        "int8_propagation",
        "prune_float_outputs",
    )

    def __init__(self, *, quantize_matmul: bool = False, keep_float_outputs: bool = False) -> None:
        super().__init__()
        self.quantize_matmul = quantize_matmul
        # True: every fused chain ends in a q/dq pair, even where only float ops consume it
        self.options["keep_float_outputs"] = bool(keep_float_outputs)

    @property
    def quantize_matmul(self) -> bool:
        return bool(self.options.get("matmul"))

    @quantize_matmul.setter
    def quantize_matmul(self, value: bool) -> None:
        self.options["matmul"] = bool(value)

    def set_function_type_qconfig(self, function_type, quantization_config):
        """As upstream: a config for torch.matmul (or torch.bmm) is how matmul gets quantized,
        so it also switches `quantize_matmul` on (and None switches it off)."""
        super().set_function_type_qconfig(function_type, quantization_config)
        if function_type in MATMUL_FUNCTIONS:
            self.quantize_matmul = quantization_config is not None
        return self

    set_operator_type = set_function_type_qconfig
