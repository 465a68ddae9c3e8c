"""Builders for the oneDNN int8 ops and the fp16-weight linear (torch 2.13 schemas): the only place
that spells their argument lists.

Every builder takes a `call(op, args)` function, so the same code builds an FX node
(`call = graph.call_function`) or runs the op eagerly (`call = eager`). Quantization
parameters travel in small records; a builder picks the overload (`.default` for Python
scalars, `.tensor` for tensor scale/zero point) and translates the records into the op's
conventions:

- fp32/bf16 output: output scale 1.0, zero point 0 (the op requires it);
- uint8/int8 output: the op takes the output scale and zero point as they are (probed on
  torch 2.13: passing the inverse scale is wrong; the tests in tests/kernels pin this);
- conv `sum` accumulates in place into `accum` (the caller owns a private copy).

Schemas: `torch.ops.onednn.<op>.<overload>._schema`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch

onednn = torch.ops.onednn

QCONV = onednn.qconv_pointwise
QCONV_BINARY = onednn.qconv2d_pointwise
QLINEAR = onednn.qlinear_pointwise
QCONV_PREPACK = onednn.qconv_prepack.default
QLINEAR_PREPACK = onednn.qlinear_prepack.default
# fp16 weights, fp32 activations (the dynamic-fp16 recipe): a plain float op, no quantization
LINEAR_FP16_PREPACK = onednn.linear_prepack_fp16.default
LINEAR_FP16 = {False: onednn.linear_dynamic_fp16.default, True: onednn.linear_relu_dynamic_fp16.default}

Call = Callable[[Any, tuple], Any]

def eager(op, args: tuple):
    """`call` for running a builder directly."""
    return op(*args)


@dataclasses.dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantization: Python scalars or tensors (nodes in a graph)."""

    scale: Any = 1.0
    zero_point: Any = 0

    @property
    def is_tensor(self) -> bool:
        return not isinstance(self.scale, (int, float))


@dataclasses.dataclass(frozen=True)
class Output:
    """What the fused op emits: float (fp32/bf16) or requantized (uint8/int8 with scale, zp)."""

    dtype: torch.dtype = torch.float32
    scale: float = 1.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype in (torch.uint8, torch.int8)

    def op_args(self) -> tuple:
        # fp out: (1.0, 0, dtype); q out: (scale, zp, dtype)
        if not self.quantized:
            return 1.0, 0, self.dtype
        return float(self.scale), int(self.zero_point), self.dtype


@dataclasses.dataclass(frozen=True)
class Unary:
    """A unary post-op as oneDNN attributes: name, scalar arguments, algorithm."""

    name: str = "none"
    scalars: tuple = ()
    algorithm: str = ""


@dataclasses.dataclass(frozen=True)
class Binary:
    """A binary post-op: `sum` (conv, in place) or `add`, the extra input's qparams, then a unary."""

    name: str = "sum"
    alpha: float = 1.0
    other: QParams = QParams(1.0, 0)
    unary: Unary = Unary()


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int = 1


def _scalars(u: Unary) -> list:
    return list(u.scalars)


def qconv_prepack(call: Call, w, w_scale, x: QParams, geom: ConvGeometry, x_shape=None):
    return call(
        QCONV_PREPACK,
        (w, w_scale, x.scale, x.zero_point, list(geom.stride), list(geom.padding),
         list(geom.dilation), geom.groups, x_shape),
    )


def qlinear_prepack(call: Call, w, x_shape=None):
    """`w` is the int8 weight in [out, in] layout (as nn.Linear stores it)."""
    return call(QLINEAR_PREPACK, (w, x_shape))


def linear_fp16_prepack(call: Call, w, x_shape=None):
    """`w` is the fp32 weight in [out, in] layout; the op rounds it to fp16 (as the model's
    fp16 round trip does) and packs it as [in, out]."""
    return call(LINEAR_FP16_PREPACK, (w, x_shape))


def linear_fp16(call: Call, x, w_packed, bias, relu: bool = False):
    """fp32 x times fp16 weights, fp32 out; relu is the only post-op the op family has."""
    return call(LINEAR_FP16[relu], (x, w_packed, bias))


def qconv(call: Call, x, xq: QParams, w_packed, w_scale, w_zp, bias, geom: ConvGeometry,
          out: Output = Output(), unary: Unary = Unary()):
    op = QCONV.tensor if xq.is_tensor else QCONV.default
    return call(
        op,
        (x, xq.scale, xq.zero_point, w_packed, w_scale, w_zp, bias, list(geom.stride),
         list(geom.padding), list(geom.dilation), geom.groups, *out.op_args(), unary.name,
         _scalars(unary), unary.algorithm or None),
    )


def qconv_binary(call: Call, x, xq: QParams, w_packed, w_scale, w_zp, accum, bias,
                 geom: ConvGeometry, out: Output, binary: Binary):
    op = QCONV_BINARY.binary_tensor if xq.is_tensor else QCONV_BINARY.binary
    u = binary.unary
    return call(
        op,
        (x, xq.scale, xq.zero_point, w_packed, w_scale, w_zp, accum, bias, list(geom.stride),
         list(geom.padding), list(geom.dilation), geom.groups, *out.op_args(),
         float(binary.other.scale), int(binary.other.zero_point), binary.name, binary.alpha,
         u.name, _scalars(u), u.algorithm or None),
    )


def qlinear(call: Call, x, xq: QParams, w_packed, w_scale, w_zp, bias,
            out: Output = Output(), unary: Unary = Unary()):
    op = QLINEAR.tensor if xq.is_tensor else QLINEAR.default
    return call(
        op,
        (x, xq.scale, xq.zero_point, w_packed, w_scale, w_zp, bias, *out.op_args(),
         unary.name, _scalars(unary), unary.algorithm),
    )


def qlinear_binary(call: Call, x, xq: QParams, w_packed, w_scale, w_zp, other, bias,
                   out: Output, binary: Binary):
    op = QLINEAR.binary_tensor if xq.is_tensor else QLINEAR.binary
    u = binary.unary
    return call(
        op,
        (x, xq.scale, xq.zero_point, w_packed, w_scale, w_zp, other, bias, *out.op_args(),
         float(binary.other.scale), int(binary.other.zero_point), binary.name,
         float(binary.alpha), u.name, _scalars(u), u.algorithm),
    )


@dataclasses.dataclass(frozen=True)
class FusedOp:
    """One fused int8 conv/linear as the builders take it. `emit` builds the call and `read`
    recovers the record from a call's arguments, so a pass can always derive the record from
    an op as it is now instead of keeping a copy that a later rewrite could make stale."""

    kind: str  # "qconv" | "qlinear"
    x: Any
    xq: QParams
    w: Any  # prepacked weight
    w_scale: Any
    w_zp: Any
    bias: Any
    geom: Optional[ConvGeometry] = None
    out: Output = Output()
    unary: Unary = Unary()
    binary: Optional[Binary] = None
    other: Any = None  # the binary post-op's extra input (conv: the accumulator)


def emit(call: Call, f: FusedOp):
    if f.kind == "qconv" and f.binary is None:
        return qconv(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.bias, f.geom, f.out, f.unary)
    if f.kind == "qconv":
        return qconv_binary(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.other, f.bias, f.geom, f.out, f.binary)
    if f.binary is None:
        return qlinear(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.bias, f.out, f.unary)
    return qlinear_binary(call, f.x, f.xq, f.w, f.w_scale, f.w_zp, f.other, f.bias, f.out, f.binary)


def lift_1d(f: FusedOp, x) -> FusedOp:
    """A 1-D conv as the 2-D conv over height 1 that the kernel runs it as: `x` is the input with
    a height dim (N, C, 1, L); the prepacked 1-D weight is already [O, I, 1, k]. Exact (the op
    does the same internally), and torch's meta kernel gets the 2-D form right, not the 1-D one."""
    g = f.geom
    return dataclasses.replace(f, x=x, geom=ConvGeometry((1, *g.stride), (0, *g.padding), (1, *g.dilation), g.groups))


FUSED_OPS = frozenset({QCONV.default, QCONV.tensor, QCONV_BINARY.binary, QCONV_BINARY.binary_tensor,
                       QLINEAR.default, QLINEAR.tensor, QLINEAR.binary, QLINEAR.binary_tensor})


def read(op, a: dict) -> Optional[FusedOp]:
    """The record of a call of `op` with arguments `a` (by schema name), or None when `op` is
    not one of the fused ops the builders emit. The inverse of `emit`."""
    if op not in FUSED_OPS:
        return None
    conv = op in (QCONV.default, QCONV.tensor, QCONV_BINARY.binary, QCONV_BINARY.binary_tensor)
    dtype = a["output_dtype"] or torch.float32
    out = Output(dtype, a["output_scale"], a["output_zero_point"]) if dtype in (torch.uint8, torch.int8) \
        else Output(dtype)
    geom = ConvGeometry(tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"]) if conv else None
    common = dict(kind="qconv" if conv else "qlinear", x=a["qx"], xq=QParams(a["x_scale"], a["x_zero_point"]),
                  w=a["qw"], w_scale=a["w_scale"], w_zp=a["w_zero_point"], bias=a["bias"], geom=geom, out=out)
    if op in (QCONV.default, QCONV.tensor):
        return FusedOp(**common, unary=_unary(a["attr"], a["scalars"], a["algorithm"]))
    if op in (QLINEAR.default, QLINEAR.tensor):
        return FusedOp(**common, unary=_unary(a["post_op_name"], a["post_op_args"], a["post_op_algorithm"]))
    if conv:
        name, alpha, other = a["binary_attr"], a["alpha"], a["qaccum"]
        oq, u = QParams(a["accum_scale"], a["accum_zero_point"]), (a["unary_attr"], a["unary_scalars"], a["unary_algorithm"])
    else:
        name, alpha, other = a["binary_post_op"], a["binary_alpha"], a["other"]
        oq = QParams(a["other_scale"], a["other_zp"])
        u = (a["unary_post_op"], a["unary_post_op_args"], a["unary_post_op_algorithm"])
    binary = Binary(name, 1.0 if alpha is None else float(alpha), oq, _unary(*u))
    return FusedOp(**common, binary=binary, other=other)


def _unary(name, scalars, algorithm) -> Unary:
    return Unary(name or "none", tuple(float(s) for s in scalars or ()), algorithm or "")


def packed_shape(op, w_shape: Sequence[int]) -> list:
    """Shape of a prepacked weight (the prepack ops have no meta kernel; probed on torch 2.13):
    conv keeps [O, I/g, *k] with 1-D kernels lifted to 2-D; linear packs [out, in] as [in, out]."""
    if op in (QLINEAR_PREPACK, LINEAR_FP16_PREPACK):
        return [w_shape[1], w_shape[0]]
    return list(w_shape[:2]) + ([1] if len(w_shape) == 3 else []) + list(w_shape[2:])


def packed_dtype(op, w_dtype: torch.dtype) -> torch.dtype:
    return torch.float16 if op is LINEAR_FP16_PREPACK else w_dtype


PREPACKS = (QCONV_PREPACK, QLINEAR_PREPACK, LINEAR_FP16_PREPACK)
