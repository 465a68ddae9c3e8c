"""inductor-quant: PT2E int8 quantization whose fused oneDNN kernels come from plain torch.compile.

export -> prepare_pt2e -> calibrate/train -> convert_pt2e -> torch.compile (freezing on).
Importing this package registers the `quantized_decomposed` ops (so saved Q/DQ models load)
and changes no compiler state.
"""

import torch.ao.quantization.fx._decomposed  # noqa: F401  registers quantized_decomposed ops

__version__ = "0.1.0"
