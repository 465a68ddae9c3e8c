"""Small converted-model stand-ins: modules whose forward calls the Q/DQ ops directly.

Each `Variant` is one row of the test table: the layer, its geometry, the post-ops, whether the
output is requantized, and what the compiled code must contain. Test ids are the variant ids.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import torch.ao.quantization.fx._decomposed  # noqa: F401
from inductor_quant.kernels.cpu import cpu_info, fuses_exactly

qd = torch.ops.quantized_decomposed

X_SCALE, X_ZP = 0.02, 128  # non-zero activation zero point
O_SCALE, O_ZP = 0.05, 10
R_SCALE, R_ZP = 0.03, 100  # residual input
# int8 weights over the range the default config picks on this CPU: [-128, 127] with VNNI,
# [-64, 63] without (kernels/cpu.py; a variant with `full_weights` takes 8 bits everywhere)
W_DEFAULT = cpu_info().int8_weight_range


def q_dq(x, scale, zp, dtype=torch.uint8, hi=None, permuted=False):
    """permuted: the int8 tensor is permuted (0, 2, 1) between quantize and dequantize, as int8
    propagation leaves a permuted quantized activation."""
    lo, top = (0, 255) if dtype == torch.uint8 else (-128, 127)
    hi = top if hi is None else hi
    q = qd.quantize_per_tensor.default(x, scale, zp, lo, hi, dtype)
    return qd.dequantize_per_tensor.default(q.permute(0, 2, 1) if permuted else q, scale, zp, lo, hi, dtype)


def dynamic_q_dq(x, permuted=False):
    scale, zp = qd.choose_qparams.tensor(x, 0, 255, torch.finfo(torch.float32).eps, torch.uint8)
    q = qd.quantize_per_tensor.tensor(x, scale, zp, 0, 255, torch.uint8)
    return qd.dequantize_per_tensor.tensor(q.permute(0, 2, 1) if permuted else q, scale, zp, 0, 255, torch.uint8)


def int8_weight(shape, g, weight_range=W_DEFAULT):
    bound = min(-weight_range[0], weight_range[1])
    return torch.randint(-bound, bound + 1, shape, dtype=torch.int8, generator=g)


POST = {
    None: lambda y: y,
    "relu": torch.relu,
    "relu6": F.relu6,
    "hardtanh": lambda y: F.hardtanh(y, -0.5, 1.5),
    "hardswish": F.hardswish,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "leaky_relu": lambda y: F.leaky_relu(y, 0.2),
    "tanh": torch.tanh,
    "not_hardswish": lambda y: y * (y + 2).clamp(0, 6) / 6,  # hardswish's shape, other constant
    "dropout": lambda y: y.clone(),  # eval-mode dropout as torch.export writes it: a copy
}


@dataclasses.dataclass(frozen=True)
class Variant:
    id: str
    layer: str  # conv1d | conv2d | conv3d | linear
    x_shape: tuple
    out_features: int = 8
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    per_channel: bool = True
    post: Optional[str] = None
    binary: Optional[str] = None  # add | add_swapped | add_relu | add_dq (residual from dq(u8))
    computed_residual: bool = False  # the residual input times 2 (computed in the graph), not the input itself
    out_q: bool = False
    act_dtype: torch.dtype = torch.uint8
    act_max: int = 255  # uint8 activations: 127 for a reduce_range=True model
    full_weights: bool = False  # weights over [-128, 127] whatever the CPU
    dynamic: bool = False  # choose_qparams -> q/dq .tensor (run-time activation qparams)
    permuted: bool = False  # linear: the int8 input permuted (0, 2, 1) before its dequantize (traced as bmm)
    fusions: tuple = ()  # fusion ids that must fire
    ops: tuple = ()  # (onednn op name, count) expected in the generated code
    bf16_fusions: Optional[tuple] = None  # where bf16 differs (None: same as fp32)
    bf16_ops: Optional[tuple] = None

    @property
    def is_conv(self):
        return self.layer.startswith("conv")

    @property
    def weight_range(self) -> tuple:
        return (-128, 127) if self.full_weights else W_DEFAULT

    @property
    def fuses_here(self) -> bool:
        """8-bit activations (int8 ones reach the kernel as uint8 + 128) times 8-bit weights are
        exact only with VNNI; elsewhere the layer stays fp32, reported with the saturation reason."""
        act_max = self.act_max if self.act_dtype == torch.uint8 else 255
        return fuses_exactly(act_max, max(-self.weight_range[0], self.weight_range[1]))


class QDQLayer(nn.Module):
    """q/dq(x) -> conv|linear(dq(w_int8)) [-> post] [-> + residual] [-> q/dq out]."""

    def __init__(self, v: Variant):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.v = v
        cin = v.x_shape[1] if v.is_conv or v.permuted else v.x_shape[-1]
        k = (v.kernel,) * (int(v.layer[-2]) if v.is_conv else 0)
        w_shape = (v.out_features, cin // v.groups) + k
        self.register_buffer("w", int8_weight(w_shape, g, v.weight_range))
        fan_in = cin // v.groups * max(1, v.kernel ** len(k))
        self.register_buffer("w_scale", (torch.rand(v.out_features, generator=g) + 0.5) / (64 * fan_in ** 0.5))
        self.register_buffer("w_zp", torch.zeros(v.out_features, dtype=torch.int64))
        self.w_scale_t = float(self.w_scale.mean())
        self.register_buffer("b", torch.randn(v.out_features, generator=g) * 0.1 if v.bias else None)

    def weight(self):
        lo, hi = self.v.weight_range
        if self.v.per_channel:
            return qd.dequantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, lo, hi, torch.int8)
        return qd.dequantize_per_tensor.default(self.w, self.w_scale_t, 0, lo, hi, torch.int8)

    def forward(self, x, residual=None):
        v = self.v
        if v.dynamic:
            return self.tail(dynamic_q_dq(x, v.permuted), residual)
        hi = v.act_max if v.act_dtype == torch.uint8 else None
        zp = (X_ZP if v.act_max == 255 else 64) if v.act_dtype == torch.uint8 else 0
        return self.tail(q_dq(x, X_SCALE, zp, v.act_dtype, hi, v.permuted), residual)

    def tail(self, x, residual=None):
        """Everything after the input q/dq (so several layers can share one dq)."""
        v = self.v
        if v.is_conv:
            conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[v.layer]
            y = conv(x, self.weight(), self.b, v.stride, v.padding, v.dilation, v.groups)
        else:
            y = F.linear(x, self.weight(), self.b)
        y = POST[v.post](y)
        if v.binary:
            r = q_dq(residual, R_SCALE, R_ZP) if v.binary.startswith("add_dq") else residual
            r = r * 2 if v.computed_residual else r
            y = r + y if v.binary == "add_swapped" else y + r
            if v.binary.endswith("relu"):
                y = torch.relu(y)
        if v.out_q:
            y = q_dq(y, O_SCALE, O_ZP, hi=v.act_max)
        return y

    def example_inputs(self, bf16=False):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(self.v.x_shape, generator=g)
        if self.v.layer == "conv2d":
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.v.binary:
            return (x,)
        with torch.no_grad():
            y_shape = QDQLayer(dataclasses.replace(self.v, binary=None, out_q=False))(x).shape
        residual = torch.randn(y_shape, generator=g)
        if self.v.layer == "conv2d":
            residual = residual.contiguous(memory_format=torch.channels_last)
        # under autocast a residual from another bf16 layer is bf16 (a dq residual stays fp32)
        return x, residual.to(torch.bfloat16) if bf16 and not self.v.binary.startswith("add_dq") else residual


class Int8Ops(nn.Module):
    """maxpool, cat, flatten and permute between q/dq pairs sharing qparams, then a linear.
    form 2: cat of three, then a plain (contiguous) flatten."""

    def __init__(self, form: int = 1):
        super().__init__()
        self.form = form
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", int8_weight((6, 8 * 4 * 4), g))
        self.register_buffer("w_scale", torch.rand(6, generator=g) / 400)
        self.register_buffer("w_zp", torch.zeros(6, dtype=torch.int64))

    def forward(self, x, x2):
        if self.form == 2:
            parts = [q_dq(t, X_SCALE, X_ZP) for t in (x[:, :3, ::2, ::2], x2[:, :3], x2[:, 3:] * 2)]
            f = q_dq(torch.flatten(q_dq(torch.cat(parts, 1), X_SCALE, X_ZP), 1), X_SCALE, X_ZP)
            w = qd.dequantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, *W_DEFAULT, torch.int8)
            return F.linear(f, w[:, :112])
        a = q_dq(F.max_pool2d(q_dq(x, X_SCALE, X_ZP), 3, 2, 1), X_SCALE, X_ZP)
        c = q_dq(torch.cat([a, q_dq(x2, X_SCALE, X_ZP)], 1), X_SCALE, X_ZP)
        c = q_dq(c.permute(0, 2, 3, 1), X_SCALE, X_ZP)
        f = q_dq(torch.flatten(c, 1), X_SCALE, X_ZP)
        w = qd.dequantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, *W_DEFAULT, torch.int8)
        return F.linear(f, w)

    @staticmethod
    def example_inputs():
        g = torch.Generator().manual_seed(1)
        return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 4, 4, generator=g)


class HandSiblings(nn.Module):
    """l1 and l2 read one input (merged into one GEMM); l1's output is also l3's residual, added
    in place by a linear `sum` until the merge turns it into a slice (issue 18's repro, in Q/DQ
    form: buffers only, so it stages without export)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = (QDQLayer(Variant(n, "linear", (8, 64), out_features=64)) for n in ("l1", "l2", "l3"))

    def forward(self, x, z):
        x = q_dq(x, X_SCALE, X_ZP)
        return self.l3.tail(q_dq(z, X_SCALE, X_ZP)) + self.l1.tail(x), self.l2.tail(x)


class CatDim0(nn.Module):
    def forward(self, a, b, c):
        return q_dq(torch.cat([q_dq(t, X_SCALE, X_ZP) for t in (a, b, c)]), X_SCALE, X_ZP)
