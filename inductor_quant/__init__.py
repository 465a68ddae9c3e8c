"""inductor-quant: PT2E int8 quantization whose fused oneDNN kernels come from plain torch.compile.

export -> prepare_pt2e -> calibrate/train -> convert_pt2e -> torch.compile (freezing on).
Importing this package registers the `quantized_decomposed` ops (so saved Q/DQ models load)
and changes no compiler state.
"""

from .kernels import compat

compat.load_quantized_decomposed()  # saved Q/DQ models call these ops

__version__ = "0.1.0"

from .api import quantize  # noqa: E402
from .compile_options import fast_options  # noqa: E402
from .kernels.cpu import cpu_info  # noqa: E402
from .export_utils import move_exported_model_to_eval, move_exported_model_to_train  # noqa: E402
from .quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e  # noqa: E402
from .smooth_quant import smooth_quant  # noqa: E402

__all__ = [
    "prepare_pt2e",
    "prepare_qat_pt2e",
    "convert_pt2e",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "quantize",
    "smooth_quant",
    "cpu_info",
    "fast_options",
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
]


def __getattr__(name: str):
    # The quantizer package is imported on first use, so `import inductor_quant` stays light.
    if name in ("X86InductorQuantizer", "get_default_x86_inductor_quantization_config"):
        from .quantizer import x86_inductor_quantizer

        return getattr(x86_inductor_quantizer, name)
    raise AttributeError(f"module 'inductor_quant' has no attribute {name!r}")
