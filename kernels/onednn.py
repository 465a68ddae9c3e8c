"""Builders for the oneDNN int8 ops (torch 2.13 schemas): the only place that spells their argument lists.

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
import functools
import warnings
from typing import Any, Callable, Sequence

import torch

onednn = torch.ops.onednn

QCONV = onednn.qconv_pointwise
QCONV_BINARY = onednn.qconv2d_pointwise
QLINEAR = onednn.qlinear_pointwise
QCONV_PREPACK = onednn.qconv_prepack.default
QLINEAR_PREPACK = onednn.qlinear_prepack.default

Call = Callable[[Any, tuple], Any]

# What the kernels accept (probed by calling the ops on torch 2.13; tests/kernels pins it).
# Unary post-op attribute names by conv spatial rank; qlinear's list; binary post-ops.
QCONV_UNARY = {1: {"relu"}, 2: {"relu", "hardtanh", "hardswish", "swish"}, 3: set()}
QLINEAR_UNARY = {"relu", "hardtanh", "hardswish", "swish", "gelu", "leaky_relu", "tanh"}
QCONV_BINARY_RANKS = {2}  # qconv2d_pointwise.binary only


def lowering_accepts_output(x_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Inductor 2.13's IR for these ops (mkldnn_ir.py) gives a requantized output the activation's
    dtype; only fp32/bf16 outputs get their own. So u8 in -> s8 out (or s8 -> u8) would be mislabeled."""
    return out_dtype in (torch.float32, torch.bfloat16) or out_dtype == x_dtype


def accepts_unary(kind: str, conv_rank: int, attr: str) -> bool:
    return attr in (QLINEAR_UNARY if kind == "qlinear" else QCONV_UNARY.get(conv_rank, set()))


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


def packed_shape(op, w_shape: Sequence[int]) -> list:
    """Shape of a prepacked weight (the prepack ops have no meta kernel; probed on torch 2.13):
    conv keeps [O, I/g, *k] with 1-D kernels lifted to 2-D; linear packs [out, in] as [in, out]."""
    if op is QLINEAR_PREPACK:
        return [w_shape[1], w_shape[0]]
    return list(w_shape[:2]) + ([1] if len(w_shape) == 3 else []) + list(w_shape[2:])


PREPACKS = (QCONV_PREPACK, QLINEAR_PREPACK)


def conv_rank(w_shape: Sequence[int]) -> int:
    """Spatial rank of a conv weight [O, I/g, *k]."""
    return len(w_shape) - 2


_FAKE_LIB = []


def register_fake_prepacks() -> None:
    """Fake (meta) kernels for the prepack ops, which torch 2.13 lacks (idempotent).

    Our prepack nodes sit in the graph through the freezing stage's fake-tensor propagation
    until constant folding evaluates them on the real int8 weights. Changes no numerics.
    """
    if _FAKE_LIB:
        return
    lib = torch.library.Library("onednn", "FRAGMENT")  # noqa: TOR901
    for op in PREPACKS:
        def fake(w, *args, _op=op, **kwargs):
            return w.new_empty(packed_shape(_op, w.shape))

        torch.library.register_fake(op, fake, lib=lib)
    _FAKE_LIB.append(lib)


_META_FIX = []


def register_conv1d_meta_fix() -> None:
    """A correct meta for 1-D onednn.qconv_pointwise (idempotent).

    The packed 1-D weight is [O, I, 1, k] (the kernel runs 1-D as 2-D over height 1); torch's meta
    reads that as a 2-D kernel over the 1-D input and derives the length from the wrong kernel
    size, e.g. 22 instead of 21 for k=2, p=1 over 20. Any shape check downstream (a residual add,
    cat, a linear over the length, a permuted conv) then fails the compile. Ours computes the 1-D
    case the way the kernel does and defers everything else to torch's meta.
    """
    if _META_FIX:
        return
    from torch._meta_registrations import meta_table

    lib = torch.library.Library("onednn", "IMPL", "Meta")  # noqa: TOR901
    for overload in ("default", "tensor"):
        op = getattr(QCONV, overload)
        torch_meta = meta_table[op]

        def meta(x, x_scale, x_zp, w, w_scale, w_zp, bias, stride, padding, dilation, *rest, _torch_meta=torch_meta):
            if x.dim() == 3 and w.dim() == 4:  # 1-D: as 2-D over height 1
                out = _torch_meta(x.unsqueeze(2), x_scale, x_zp, w, w_scale, w_zp, bias, [1, *stride], [0, *padding],
                                  [1, *dilation], *rest)
                return out.squeeze(2)
            return _torch_meta(x, x_scale, x_zp, w, w_scale, w_zp, bias, stride, padding, dilation, *rest)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": intended
            lib.impl(op, meta)
        # torch also keeps its meta as the op's Python-dispatcher kernel (used while tracing)
        if torch._C.DispatchKey.Meta in op.py_kernels:
            op.py_kernels[torch._C.DispatchKey.Meta] = meta
            op._dispatch_cache.clear()
    _META_FIX.append(lib)


@functools.lru_cache(maxsize=None)
def qconv_is_exact(x_shape: tuple, w_shape: tuple, geom: ConvGeometry, act_max: int = 255, w_max: int = 127) -> bool:
    """Does the int8 conv kernel compute this geometry right? Run once on random data within
    the ranges the model uses (activations up to `act_max`, weights up to +-`w_max`) (batch 1,
    the layout Inductor feeds it) against the plain-PyTorch reference. torch 2.13's kernel is
    wrong for some strided convs with output width 1 and for conv3d over depth 1 with a deeper
    kernel (differential fuzzer findings); callers probe only those suspect classes."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    try:
        with unset_fake_temporarily(), torch.no_grad():  # called from inside a compile: real tensors
            return _run_qconv_probe(x_shape, w_shape, geom, act_max, w_max)
    except Exception:  # noqa: BLE001 - a probe that cannot run proves nothing: stay unfused
        return False


def _run_qconv_probe(x_shape: tuple, w_shape: tuple, geom: ConvGeometry, act_max: int, w_max: int) -> bool:
    from . import reference

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, act_max + 1, (1, *x_shape[1:]), dtype=torch.uint8, generator=g)
    if x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    w = torch.randint(-w_max, w_max + 1, w_shape, dtype=torch.int8, generator=g)
    w_scale, w_zp, xq = torch.full((w_shape[0],), 0.01), torch.zeros(w_shape[0], dtype=torch.int64), QParams(0.02, 7)
    packed = qconv_prepack(eager, w, w_scale, xq, geom, list(x.shape))
    got = qconv(eager, x, xq, packed, w_scale, w_zp, None, geom)
    want = reference.qconv(x, xq, w, w_scale, w_zp, None, geom)
    return bool((got - want).abs().max() <= 1e-3 * want.abs().max() + 1e-4)


@functools.lru_cache(maxsize=None)
def qlinear_binary_builds(out_dtype: torch.dtype, name: str) -> bool:
    """Does oneDNN build an int8 matmul with this output dtype and binary post-op here? Without
    AVX-512 it has no u8 x s8 matmul with bf16 output and a bf16 `add` ("could not create a
    primitive descriptor"); `sum` and fp32 outputs build everywhere. Asked once per process."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    try:
        with unset_fake_temporarily(), torch.no_grad():  # called from inside a compile: real tensors
            x, w = torch.zeros(2, 16, dtype=torch.uint8), torch.ones(16, 16, dtype=torch.int8)
            scale, zp = torch.ones(16), torch.zeros(16, dtype=torch.int64)
            packed = qlinear_prepack(eager, w, list(x.shape))
            qlinear_binary(eager, x, QParams(1.0, 0), packed, scale, zp, torch.zeros(2, 16, dtype=out_dtype), None,
                           Output(out_dtype), Binary(name))
        return True
    except RuntimeError:
        return False
