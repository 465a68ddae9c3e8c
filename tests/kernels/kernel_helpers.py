"""What the kernel tests share: the weight range of this CPU, an activation quantization, and
the comparison of an op with its reference."""

import torch

from inductor_quant.kernels import onednn as K
from inductor_quant.kernels.cpu import cpu_info

# weights in the range the default config picks on this CPU (7 bits without VNNI, where 8-bit
# weights times 8-bit activations saturate: tests/kernels/test_cpu.py, tests/e2e/test_cpu_kinds.py)
W_MAX = min(-cpu_info().int8_weight_range[0], cpu_info().int8_weight_range[1])
XQ = K.QParams(0.02, 7)  # non-zero activation zero point


def assert_matches_reference(y, r, out: K.Output):
    """Same dtype and shape; requantized outputs within one quantization step, float ones within
    fp32 (or bf16) tolerance."""
    assert y.dtype == r.dtype == out.dtype and y.shape == r.shape
    if out.quantized:
        assert (y.int() - r.int()).abs().max() <= 1
    else:
        tol = 2e-2 if out.dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(y.float(), r.float(), atol=tol, rtol=tol)
