"""kernels/int4pack.py: torch's int4 CPU GEMM called through our builders computes the linear on
the dequantized group-wise weight, symmetric or with per-group zero points (fp32: exactly up
to summation order; bf16: within bf16 rounding), and `supports` says which geometries the op takes."""

import pytest
import torch

from inductor_quant.kernels import int4pack
from inductor_quant.kernels.onednn import eager


def _grouped(n, k, group, seed=0, symmetric=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-8, 8, (n * k // group, group), dtype=torch.int8, generator=g)
    scale = torch.rand(n * k // group, generator=g) * 0.05 + 0.01
    zp = torch.zeros(n * k // group, dtype=torch.int64) if symmetric else torch.randint(-8, 8, (n * k // group,), generator=g)
    dequantized = ((w.float() - zp[:, None]) * scale[:, None]).reshape(n, k)
    return w, scale, zp, dequantized


@pytest.mark.parametrize("n,k,group", [(16, 32, 32), (48, 128, 64), (32, 256, 128), (16, 512, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero_points"])
def test_matches_the_linear_on_the_dequantized_weight(n, k, group, dtype, symmetric):
    w, scale, zp, dequantized = _grouped(n, k, group, symmetric=symmetric)
    x = torch.randn(5, k).to(dtype)
    packed = int4pack.pack(eager, w, n, k)
    out = int4pack.mm(eager, x, packed, group, int4pack.scale_zeros(eager, scale, zp, n, k, group, dtype))
    ref = x.double() @ dequantized.to(dtype).double().t()
    assert out.dtype == dtype and out.shape == (5, n)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_supports_the_geometries_the_op_takes():
    assert int4pack.supports(16, 64, 32) and int4pack.supports(4096, 4096, 128)
    assert not int4pack.supports(8, 64, 32)  # out not a multiple of 16
    assert not int4pack.supports(16, 48, 32)  # in not whole groups
    assert not int4pack.supports(16, 64, 16)  # group below 32
    w, _, _, _ = _grouped(16, 32, 32)
    with pytest.raises(RuntimeError, match="qGroupSize"):  # the op itself refuses what supports() refuses
        int4pack.mm(eager, torch.randn(2, 32), int4pack.pack(eager, w, 16, 32), 16, torch.ones(2, 16, 2))
