"""XNNPACKQuantizer: the generic symmetric-int8 quantizer of the PT2E tutorials.

    from inductor_quant.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())

Same machinery as X86InductorQuantizer, upstream XNNPACK's pattern list: conv/linear (+bn
in QAT) with an optional relu, standalone add/mul (+relu), pool/cat/shape propagation. Its
int8 symmetric graphs reach our Inductor passes too (they shift s8 activations to u8).
"""

from __future__ import annotations

from .annotating_quantizer import AnnotatingQuantizer
from .configs import get_symmetric_quantization_config

__all__ = ["XNNPACKQuantizer", "get_symmetric_quantization_config"]


class XNNPACKQuantizer(AnnotatingQuantizer):
    __doc__ = AnnotatingQuantizer.__doc__

    annotator_order = (
        "conv.unary",
        "conv",
        "linear.unary",
        "linear",
        "add.relu",
        "add",
        "mul.relu",
        "mul",
        "int8_propagation",
    )
    unary_post_ops = frozenset({"relu"})
