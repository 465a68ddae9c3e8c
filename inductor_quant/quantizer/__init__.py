"""Quantizers and the annotation API (the names `torch.ao.quantization.quantizer` had).

    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    from inductor_quant.quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
"""

from .composable_quantizer import ComposableQuantizer
from .configs import (
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
    get_x86_inductor_linear_dynamic_fp16_config,
    get_x86_inductor_linear_dynamic_per_token_config,
    get_x86_inductor_linear_weight_only_int4_config,
    get_x86_inductor_linear_weight_only_int8_config,
)
from .quantizer import (
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from .report import AnnotationReport, annotation_report
from .x86_inductor_quantizer import X86InductorQuantizer
from .xnnpack_quantizer import XNNPACKQuantizer

__all__ = [
    "Quantizer",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "SharedQuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "ComposableQuantizer",
    "EdgeOrNode",
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "get_x86_inductor_linear_weight_only_int8_config",
    "get_x86_inductor_linear_weight_only_int4_config",
    "get_x86_inductor_linear_dynamic_per_token_config",
    "XNNPACKQuantizer",
    "get_symmetric_quantization_config",
    "AnnotationReport",
    "annotation_report",
]
