"""Our own kernel calls (`torch.ops.iq_onednn.*`): built from `native/onednn_direct.cpp` at first
use, loaded into the process, and described to the compiler.

Why: torch's `onednn.qconv_pointwise` rebuilds its oneDNN primitive descriptor on every call;
ours builds each layer's primitive once (docs/ARCHITECTURE.md, "Own kernel calls").

Build: like Inductor's own kernels, with the machine's C++ compiler (`$CXX`, else g++) against
torch's headers, once per (source, torch build, compiler), into
`$INDUCTOR_QUANT_CACHE_DIR` (default `~/.cache/inductor-quant`)`/kernels/<key>/`; later
processes load the cached library. Anything that goes wrong (no compiler, a failed build, a
torch whose oneDNN cannot be reached) gives one warning naming the cause, and `available()`
answers False: the passes then keep torch's ops, which compute the same numbers.

Contract of `iq_onednn::qconv2d` (tests/kernels/test_native.py): torch's
`onednn.qconv_pointwise.default` for a 2-D conv, with the weight as the plain int8 [O, I/g, kh, kw]
tensor (no prepack; no weight zero point: symmetric weights, as the X86 quantizer makes them) and
every argument a scalar (geometry per dim, the unary post-op as a code of `POST_OPS`), so the C++
wrapper calls it through torch's light dispatcher bridge; channels-last output; for every post-op
torch's 2-D conv accepts, the result is bitwise torch's.

Contract of `iq_onednn::qlinear` / `qlinear_sum_` / `qlinear_add`: torch's `onednn.qlinear_pointwise`
(`.default`; `.binary` with `sum`, alpha 1, for `qlinear_sum_`, which writes over its contiguous
accumulator and returns nothing; `.binary` with `add`, alpha 1, a float extra input, for
`qlinear_add`), with the plain int8 [out, in] weight; bitwise torch's.

Contract of `iq_onednn::woq_linear` (weight-only int8): `F.linear(x, w * w_scale[:, None], bias)`
for x fp32 or bf16 and the plain int8 [out, in] weight, the output in x's dtype, within fp32 /
bf16 rounding (the weight kept int8 and converted in registers; the scale applied after the sum).
bf16 activations need AVX-512 (`probe.weight_only_linear_builds`). With scales per group,
`w_scale` [out, in / group] (group a multiple of 32; fp32, or fp16, which the GEMV reads as such
and widens exactly: half the scale bytes): `F.linear(x, w_float.to(x.dtype), bias)`
with w_float = w * w_scale repeated over each group's columns, the same within fp32 / bf16
rounding; one row streams the int8 weight (native/woq_gemv.h), more rows run the float GEMM on
that dequantized weight. Any CPU (the GEMV widens bf16 to fp32).

Contract of `iq_onednn::woq_int4_linear` (weight-only int4, group-wise): torch's int4 CPU GEMM
(kernels/int4pack.py) on the same weight: `F.linear(x, w, bias)` with w = (u - 8) * scale + zero
per group, u the 4-bit values packed by `woq_int4_pack` (our layout: native/woq_int4.h) and the
(scale, zero) pairs [out, in / group, 2] in x's dtype (`int4pack.scale_zeros(..., channels_first=True)`); x fp32 or bf16, the
output in x's dtype, within fp32 / bf16 rounding. One row streams the packed weight; more rows
dequantize it into x's dtype and run the float GEMM.

Contract of `iq_onednn::attention`: `softmax(q @ k.transpose(-2, -1) * scale + mask, -1) @ v` for
4-D [B, H, S, D] q, k, v, all fp32 or all bf16, and an optional fp32/bf16 additive mask that
broadcasts to [B, H, Sq, Sk]; scores and softmax in fp32, the output in q's dtype, laid out as
torch's `_scaled_dot_product_flash_attention_for_cpu` lays out its own ([B, S, H, D] memory);
within fp32 / bf16 rounding of that op. bf16 runs `native/attention_bf16.h` where the CPU has
AVX512-BF16 and no AMX (`attention_kernel` switches it; `vector_code()` says which runs), the
oneDNN primitives elsewhere: the same contract.

Contract of `iq_onednn::layer_norm_quant`: `layer_norm(x, [n], weight, bias, eps)` over the last
dim of float32 x (n = its size), as Inductor computes the decomposed op (mean, then the variance
around it, `1 / sqrt(var + eps)`), and `quantize_per_tensor` of it (uint8 or int8, `scale`,
`zero_point`, clamped to [qmin, qmax]); returns (the float output, or an empty tensor unless
`float_out`; the quantized one). The float output within float rounding of that computation, the
quantized one within one step of quantizing it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Optional

import torch

SOURCE = pathlib.Path(__file__).parent / "native" / "onednn_direct.cpp"
LIBRARY = "iq_onednn"
# torch's unary post-ops (name, algorithm) -> our ops' code (the C++ `eltwise` switch); a conv
# takes the first five (as torch's), a linear all
POST_OPS = {("none", ""): 0, ("relu", ""): 1, ("hardtanh", ""): 2, ("hardswish", ""): 3, ("swish", ""): 4,
            ("leaky_relu", ""): 5, ("tanh", ""): 6, ("gelu", "none"): 7, ("gelu", "tanh"): 8}


def post_op_code(u) -> Optional[int]:
    """Our code for the unary post-op record `u` (kernels.onednn.Unary), None if we have none."""
    return POST_OPS.get((u.name, u.algorithm or ("none" if u.name == "gelu" else "")))


def cache_root() -> pathlib.Path:
    base = os.environ.get("INDUCTOR_QUANT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inductor-quant")
    return pathlib.Path(base)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


# -fopenmp: at::parallel_for is OpenMP inlined into this library (without it our GEMV ran on one thread)
# -ffp-contract=off: a * b + c stays two roundings, as in Inductor's own kernels (layer_norm_quant.h)
FLAGS = ("-O2", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-w")


def _build_key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    torch_lib = pathlib.Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    st = torch_lib.stat() if torch_lib.exists() else None
    h = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(SOURCE.parent.glob("*.[ch]*"))))  # the .cpp and its headers
    for part in (torch.__version__, str(torch_lib), str(st and (st.st_size, st.st_mtime_ns)), version, sys.platform,
                 " ".join(FLAGS)):
        h.update(part.encode())
    return h.hexdigest()[:20]


def _compile(cxx: str, out: pathlib.Path) -> None:
    from torch.utils.cpp_extension import include_paths

    torch_lib = pathlib.Path(torch.__file__).parent / "lib"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        partial = pathlib.Path(tmp.name)
    cmd = [cxx, *FLAGS, str(SOURCE), "-o", str(partial),
           *(f"-I{p}" for p in include_paths()),
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the C++ build failed ({' '.join(cmd[:2])} ...):\n{done.stderr[-2000:]}")
        os.replace(partial, out)  # atomic: a concurrent process sees the old state or the whole library
    finally:
        partial.unlink(missing_ok=True)


def library_path() -> pathlib.Path:
    """Where this torch build's library is (built first if missing)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH; install g++ "
                           "(Inductor needs one too) or set CXX")
    path = cache_root() / "kernels" / _build_key(cxx) / f"{LIBRARY}.so"
    if not path.exists():
        _compile(cxx, path)
    return path


@functools.cache
def load() -> str:
    """Build (once per machine) and load the library; '' when ready, else why it is not."""
    if sys.platform != "linux":
        return "own kernel calls are built for Linux only"
    try:
        torch.ops.load_library(str(library_path()))
        reason = torch.ops.iq_onednn.status()
    except Exception as e:  # noqa: BLE001 - any failure means: keep torch's ops, say why once
        reason = f"{type(e).__name__}: {e}{_loader_error()}"
    if reason:
        warnings.warn(f"inductor-quant: own oneDNN kernel calls are unavailable ({reason}); "
                      "fused layers call torch's onednn ops (same numbers, slower per call).", stacklevel=2)
        return reason
    _register_fakes()
    return ""


def _loader_error() -> str:
    """The dynamic loader's own words (an undefined symbol, say), which torch's message omits."""
    import ctypes

    try:
        ctypes.CDLL(str(library_path()))
    except OSError as e:
        return f" ({e})"
    except Exception:  # noqa: BLE001 - only a better message is at stake
        pass
    return ""


def available() -> bool:
    return load() == ""


def _register_fakes() -> None:
    """Shapes and strides for the compiler: channels-last output of the conv's size."""

    @torch.library.register_fake(f"{LIBRARY}::qconv2d")
    def _(x, x_scale, x_zp, w, w_scale, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
          out_scale, out_zp, out_dtype, post_op, post_alpha, post_beta):
        size = [x.shape[0], w.shape[0]]
        for n, k, s, p, d in ((x.shape[2], w.shape[2], stride_h, pad_h, dilation_h),
                              (x.shape[3], w.shape[3], stride_w, pad_w, dilation_w)):
            size.append((n + 2 * p - (k - 1) * d - 1) // s + 1)
        return x.new_empty(size, dtype=out_dtype or torch.float32).contiguous(memory_format=torch.channels_last)


    @torch.library.register_fake(f"{LIBRARY}::qconv2d_sum_")
    def _(x, x_scale, x_zp, w, w_scale, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
          out_scale, out_zp, out_dtype, accum, accum_scale, accum_zp, post_op, post_alpha, post_beta):
        return None  # writes `accum` in place


    @torch.library.register_fake(f"{LIBRARY}::qlinear")
    def _(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype, post_op, post_alpha, post_beta):
        return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype or torch.float32)


    @torch.library.register_fake(f"{LIBRARY}::qlinear_sum_")
    def _(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype, accum, accum_scale, accum_zp,
          post_op, post_alpha, post_beta):
        return None  # writes `accum` in place


    @torch.library.register_fake(f"{LIBRARY}::qlinear_add")
    def _(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype, other, post_op, post_alpha,
          post_beta):
        return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype or torch.float32)


    @torch.library.register_fake(f"{LIBRARY}::woq_linear")
    def _(x, w, w_scale, bias, m_hint):
        return x.new_empty((*x.shape[:-1], w.shape[0]))


    @torch.library.register_fake(f"{LIBRARY}::woq_int4_linear")
    def _(x, w4, sz, group, bias):
        return x.new_empty((*x.shape[:-1], w4.shape[0]))


    @torch.library.register_fake(f"{LIBRARY}::attention")
    def _(q, k, v, mask, scale):
        # [B, S, H, D] memory seen as [B, H, S, D]: torch's CPU flash attention's output layout
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], v.shape[3])).transpose(1, 2)


    @torch.library.register_fake(f"{LIBRARY}::layer_norm_quant")
    def _(x, weight, bias, eps, scale, zero_point, qmin, qmax, dtype, float_out):
        return x.new_empty(x.shape if float_out else (0,)), x.new_empty(x.shape, dtype=dtype)


def _conv_args(f, w_plain) -> tuple:
    (sh, sw), (ph, pw), (dh, dw) = f.geom.stride, f.geom.padding, f.geom.dilation
    return (f.x, f.xq.scale, f.xq.zero_point, w_plain, f.w_scale, f.bias, sh, sw, ph, pw, dh, dw, f.geom.groups,
            *f.out.op_args())


def _post_op(u) -> tuple:
    low, high = u.scalars if u.name == "hardtanh" else (*u.scalars, 0.0) if u.name == "leaky_relu" else (0.0, 0.0)
    return post_op_code(u), float(low), float(high)


def qconv2d(call, f, w_plain):
    """Build our conv call for the fused record `f` (a 2-D conv in torch's qconv_pointwise form:
    scalar activation qparams, a unary post-op of `POST_OPS` or none) on the plain int8 weight."""
    return call(torch.ops.iq_onednn.qconv2d.default, (*_conv_args(f, w_plain), *_post_op(f.unary)))


def qconv2d_sum_(call, f, w_plain):
    """Our in-place residual conv for the record `f` of torch's `qconv2d_pointwise.binary` with
    `sum` (alpha 1): writes over `f.other` (the accumulator) and returns nothing."""
    acc = f.binary.other
    return call(torch.ops.iq_onednn.qconv2d_sum_.default,
                (*_conv_args(f, w_plain), f.other, float(acc.scale), int(acc.zero_point), *_post_op(f.binary.unary)))


def qlinear(call, f, w_plain, m_hint: int):
    """Our linear call for the fused record `f` (torch's qlinear_pointwise form: scalar activation
    qparams, a unary post-op or none) on the plain int8 [out, in] weight. `m_hint`: the row count
    torch's prepack picked the weight layout for (a 2-D example input's rows, else 1)."""
    return call(torch.ops.iq_onednn.qlinear.default,
                (f.x, f.xq.scale, f.xq.zero_point, w_plain, f.w_scale, f.bias, int(m_hint), *f.out.op_args(),
                 *_post_op(f.unary)))


def qlinear_sum_(call, f, w_plain, m_hint: int):
    """Our in-place residual linear for the record `f` of torch's `qlinear_pointwise.binary` with
    `sum` (alpha 1): writes over `f.other` (the contiguous accumulator) and returns nothing."""
    acc = f.binary.other
    return call(torch.ops.iq_onednn.qlinear_sum_.default,
                (f.x, f.xq.scale, f.xq.zero_point, w_plain, f.w_scale, f.bias, int(m_hint), *f.out.op_args(),
                 f.other, float(acc.scale), int(acc.zero_point), *_post_op(f.binary.unary)))


def qlinear_add(call, f, w_plain, m_hint: int):
    """Our residual linear for the record `f` of torch's `qlinear_pointwise.binary` with `add`
    (alpha 1): `f.other` (float) added, a new output."""
    return call(torch.ops.iq_onednn.qlinear_add.default,
                (f.x, f.xq.scale, f.xq.zero_point, w_plain, f.w_scale, f.bias, int(m_hint), *f.out.op_args(),
                 f.other, *_post_op(f.binary.unary)))


def woq_linear(call, x, w, w_scale, bias, x_shape):
    """Our weight-only int8 linear: x (fp32 or bf16) times the int8 [out, in] weight, each output
    channel times its fp32 scale ([out]; [out, in / group]: each group's), plus the bias (x's
    dtype); the output in x's dtype. The weight's
    oneDNN layout is picked for the rows of `x_shape` (static), else one row (a decode step)."""
    rows = math.prod(int(d) for d in x_shape[:-1]) if x_shape is not None else 1
    return call(torch.ops.iq_onednn.woq_linear.default, (x, w, w_scale, bias, max(rows, 1)))


def woq_int4_pack(call, w_grouped, n: int, k: int):
    """int8 q in [-8, 7] seen as [N * K / group, group] -> our packed uint8 [N, K / 2]: in each run
    of 32 input channels, byte i = (q[i] + 8) | (q[i + 16] + 8) << 4 (native/woq_int4.h)."""
    aten, prims = torch.ops.aten, torch.ops.prims
    u = call(aten.add.Tensor, (call(prims.convert_element_type.default, (w_grouped, torch.int32)), 8))
    runs = call(aten.view.default, (u, [n, k // 32, 2, 16]))
    low, high = (call(aten.select.int, (runs, 2, i)) for i in (0, 1))
    byte = call(aten.bitwise_or.Tensor, (low, call(aten.mul.Tensor, (high, 16))))
    return call(aten.view.default, (call(prims.convert_element_type.default, (byte, torch.uint8)), [n, k // 2]))


def woq_int4_linear(call, x, packed, pairs, group: int, bias):
    """Our weight-only int4 linear (contract above): x [..., K] fp32 or bf16, the output in x's dtype."""
    return call(torch.ops.iq_onednn.woq_int4_linear.default, (x, packed, pairs, int(group), bias))
