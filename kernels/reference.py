"""Plain-PyTorch references for the builders in `onednn.py`: the same math, unfused.

Each reference takes the int8 weight as stored (not prepacked) and the same records as its
builder: y = post(op(dq(x), dq(w)) + bias) [+ dq(other)], then cast or requantize.
Used by tests to check a fused op on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import capabilities
from .onednn import Binary, ConvGeometry, Output, QParams, Unary


def _f(v):
    return v.item() if isinstance(v, torch.Tensor) else v


def dequant(x: torch.Tensor, q: QParams) -> torch.Tensor:
    return (x.float() - _f(q.zero_point)) * _f(q.scale)


def dequant_weight(w: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (w.float() - w_zp.reshape(shape).float()) * w_scale.reshape(shape).float()


def unary(y: torch.Tensor, u: Unary) -> torch.Tensor:
    """The post-op's math from its capability record (kernels/capabilities.py)."""
    if u.name == "none":
        return y
    return capabilities.by_attr(u.name, u.algorithm).math(y, [float(v) for v in u.scalars])


def emit(y: torch.Tensor, out: Output) -> torch.Tensor:
    if not out.quantized:
        return y.to(out.dtype)
    info = torch.iinfo(out.dtype)
    q = torch.round(y / out.scale) + out.zero_point
    return q.clamp(info.min, info.max).to(out.dtype)


def _conv(x, w, bias, geom: ConvGeometry):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
    return conv(x, w, bias, list(geom.stride), list(geom.padding), list(geom.dilation), geom.groups)


def qconv(x, xq: QParams, w, w_scale, w_zp, bias, geom: ConvGeometry,
          out: Output = Output(), u: Unary = Unary()):
    y = _conv(dequant(x, xq), dequant_weight(w, w_scale, w_zp), bias, geom)
    return emit(unary(y, u), out)


def _other(other, b: Binary):
    return other.float() if other.is_floating_point() else dequant(other, b.other)


def qconv_binary(x, xq: QParams, w, w_scale, w_zp, accum, bias, geom: ConvGeometry,
                 out: Output, b: Binary):
    y = _conv(dequant(x, xq), dequant_weight(w, w_scale, w_zp), bias, geom)
    return emit(unary(y + b.alpha * _other(accum, b), b.unary), out)


def qlinear(x, xq: QParams, w, w_scale, w_zp, bias, out: Output = Output(), u: Unary = Unary()):
    y = F.linear(dequant(x, xq), dequant_weight(w, w_scale, w_zp), bias)
    return emit(unary(y, u), out)


def qlinear_binary(x, xq: QParams, w, w_scale, w_zp, other, bias, out: Output, b: Binary):
    y = F.linear(dequant(x, xq), dequant_weight(w, w_scale, w_zp), bias)
    return emit(unary(y + b.alpha * _other(other, b), b.unary), out)
