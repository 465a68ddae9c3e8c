"""torch's own quantization counters, as a regression suite written against torch 2.13's built-in
x86 passes reads them (`counters["inductor"]["qconv_unary_matcher_count"]`, ...).

Each chain is quantized with the upstream recipe (`keep_float_outputs=True`) and compiled twice
on torch 2.13: by torch's built-in passes (ours uninstalled) and by ours; the counters must be
equal. The built-in numbers are kept in golden/upstream_counters.json, so torch 2.14 (which no
longer has those passes) checks ours against them too. Every compile of ours is also compared
with the eager converted model.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.quantizer import (X86InductorQuantizer, get_default_x86_inductor_quantization_config,
                                      get_x86_inductor_linear_dynamic_fp16_config)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "upstream_counters.json"
# torch 2.13 has the built-in passes to compare with; 2.14 dropped them (the golden file stands in)
BUILTINS_HERE = hasattr(importlib.import_module("torch._inductor.fx_passes.quantization"),
                        "_register_quantization_weight_pack_pass")


class ConvRelu(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(n))

    def forward(self, x):
        for c in self.convs:
            x = F.relu(c(x))
        return x


UNARY = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
         "hardtanh": functools.partial(F.hardtanh, min_val=-0.5, max_val=4.0), "hardswish": F.hardswish,
         "silu": F.silu, "tanh": torch.tanh, None: lambda t: t}


class ConvUnary(nn.Module):
    def __init__(self, post):
        super().__init__()
        self.conv, self.post = nn.Conv2d(4, 4, 3, padding=1), post

    def forward(self, x):
        return UNARY[self.post](self.conv(x))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)

    def forward(self, x):
        return self.conv(x)


class ConvAddRelu(nn.Module):
    """A residual block: conv -> + x -> relu."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        return F.relu(self.c2(x) + x)


class ConvMaxPoolCatFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        a = F.max_pool2d(F.relu(self.c1(x)), 2)
        b = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(torch.cat([a, b], 1), 1))


class DequantPromotion(nn.Module):
    """One activation read by two convs, whose sum a third conv reads."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(4, 4, 1) for _ in range(3))

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y) + self.c3(y)


class Linear(nn.Module):
    def __init__(self, post=None, rank=2):
        super().__init__()
        self.l1, self.post, self.rank = nn.Linear(16, 16), post, rank

    def forward(self, x):
        y = self.l1(x)
        return UNARY[self.post](y)


class LinearOnPermuted(nn.Module):
    """A linear on a permuted 3-D input (channel mixing): traced as expand + bmm."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(16, 8)

    def forward(self, x):
        return self.l1(F.relu(x).permute(0, 2, 1))


class LinearAdd(nn.Module):
    """Two linears on one input, summed (+ relu): the second's output is the first's extra input."""

    def __init__(self, relu=False):
        super().__init__()
        self.l1, self.l2, self.relu = nn.Linear(16, 16), nn.Linear(16, 16), relu

    def forward(self, x):
        y = self.l1(x) + self.l2(x)
        return F.relu(y) if self.relu else y


class LinearAddComputedExtra(nn.Module):
    """linear(x) + sin(x), requantized for the next linear: the extra input is an fp32 value a
    pointwise op computes (not a dequantize, not a buffer yet)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.l2(self.l1(x) + torch.sin(x))


class LinearInPlaceAddRelu(nn.Module):
    """x.add_(y) / y.add_(x) on two 3-D linears' outputs, then relu: functionalized, the add and the
    relu have a view there and back between them."""

    def __init__(self, swapped=False):
        super().__init__()
        self.l1, self.l2, self.swapped = nn.Linear(16, 16), nn.Linear(16, 16), swapped

    def forward(self, x):
        a, b = self.l1(x), self.l2(x)
        return F.relu(b.add_(a) if self.swapped else a.add_(b))


CHAINS = {
    "conv_relu": (lambda: ConvRelu(), (2, 4, 8, 8), "static"),
    "conv": (lambda: Conv(), (2, 4, 8, 8), "static"),
    "conv_add_relu": (lambda: ConvAddRelu(), (2, 4, 8, 8), "static"),
    "maxpool_cat_flatten": (lambda: ConvMaxPoolCatFlatten(), (2, 4, 8, 8), "static"),
    "dequant_promotion": (lambda: DequantPromotion(), (2, 4, 8, 8), "static"),
    "linear": (lambda: Linear(), (4, 16), "static"),
    "linear_relu": (lambda: Linear("relu"), (4, 16), "static"),
    "linear_gelu_3d": (lambda: Linear("gelu"), (2, 3, 16), "static"),
    **{f"conv_{p}": (functools.partial(ConvUnary, p), (2, 4, 8, 8), "static") for p in ("hardtanh", "hardswish", "silu")},
    **{f"linear_{p}": (functools.partial(Linear, p), (4, 16), "static")
       for p in ("gelu_tanh", "hardtanh", "hardswish", "silu", "tanh")},
    "linear_add": (lambda: LinearAdd(), (4, 16), "static"),
    "linear_add_relu": (lambda: LinearAdd(True), (2, 3, 16), "static"),
    "linear_add_computed_extra_requant": (lambda: LinearAddComputedExtra(), (4, 16), "static"),
    "linear_dynamic": (lambda: Linear("relu"), (4, 16), "dynamic"),
    "linear_on_permuted": (lambda: LinearOnPermuted(), (2, 16, 3), "static"),
    "linear_inplace_add_relu": (lambda: LinearInPlaceAddRelu(), (2, 3, 16), "static"),
    "linear_inplace_add_relu_swapped": (lambda: LinearInPlaceAddRelu(True), (2, 3, 16), "static"),
    "conv_relu_qat": (lambda: ConvRelu(1), (2, 4, 8, 8), "qat"),
    # get_x86_inductor_linear_dynamic_fp16_config(): fp16 weights, float activations
    "linear_fp16": (lambda: Linear(), (4, 16), "fp16"),
    "linear_fp16_relu_3d": (lambda: Linear("relu"), (2, 3, 16), "fp16"),
}
# where torch's built-in passes fuse more than ours (README, "Migrating"): pinned, not hidden
KNOWN_GAPS: dict = {}
# where ours fuse more: of the unary ops tested, torch 2.13 folds only relu and gelu (both forms) into
# a linear whose output stays float;
# ours fold these too (README, "Migrating"), and count them as torch would count a unary fold
FOLDED_BY_US_ONLY = {f"linear_{p}" for p in ("hardtanh", "hardswish", "silu", "tanh")}
# the counters torch's built-in quantization passes keep (and ours emulate)
NAMES = ("dequant_promotion_matcher", "qconv_weight_prepack_matcher", "qlinear_weight_prepack_matcher",
         "qconv_unary_matcher", "qconv2d_binary_matcher", "qlinear_unary_matcher", "qlinear_binary_matcher",
         "qconv_unary_lower", "qconv2d_binary_lower", "qlinear_unary_lower", "qlinear_binary_lower",
         "qmaxpool2d_matcher", "qcat_matcher", "qreshape_matcher")


@pytest.fixture(scope="module")
def converted():
    """chain name -> (converted model, example input), quantized once with the upstream recipe."""
    out = {}
    for name, (make, shape, kind) in CHAINS.items():
        torch.manual_seed(0)
        x = torch.randn(shape)
        config = (get_x86_inductor_linear_dynamic_fp16_config() if kind == "fp16" else
                  get_default_x86_inductor_quantization_config(is_dynamic=kind == "dynamic", is_qat=kind == "qat"))
        quantizer = X86InductorQuantizer(keep_float_outputs=True).set_global(config)
        model = make().train() if kind == "qat" else make().eval()
        if kind == "qat":
            from inductor_quant import convert_pt2e, prepare_qat_pt2e
            prepared = prepare_qat_pt2e(torch.export.export(model, (x,)).module(), quantizer)
            prepared(x)
            q = convert_pt2e(prepared)
        else:
            q = quantize(model, (x,), [(x,)], quantizer=quantizer)
        out[name] = (q, x)
    return out


def _counts() -> dict:
    table = counters["inductor"]
    return {f"{n}_{k}": table[f"{n}_{k}"] for n in NAMES for k in ("count", "nodes") if table[f"{n}_{k}"]}


def _compile(model, x, bf16=False, cpp_wrapper=False, dynamic=False):
    torch._dynamo.reset()
    counters.clear()
    autocast = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast, torch._inductor.config.patch(freezing=True, cpp_wrapper=cpp_wrapper,
                                                                 fx_graph_cache=False):
        out = torch.compile(model, dynamic=dynamic or None)(x)
    return out, _counts()


@contextlib.contextmanager
def builtins_only():
    """torch's default state: its own passes, ours not installed."""
    iq_passes.uninstall()
    iq_passes.set_builtin_fusions(True)
    try:
        yield
    finally:
        iq_passes.set_builtin_fusions(False)
        iq_passes.install()


def _golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def _key(name, bf16):
    return f"{name}{'.bf16' if bf16 else ''}"


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", CHAINS)
def test_counters_are_torch_builtin_passes_counters(name, bf16, converted, our_passes_only):
    if bf16 and not cpu_info().bf16_native:
        pytest.skip("bf16 emulated on this CPU")
    model, x = converted[name]
    ours_out, ours = _compile(model, x, bf16=bf16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        ref = model(x)
    tol = dict(atol=5e-2, rtol=5e-2) if bf16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_out.float(), ref.float(), **tol)
    key = _key(name, bf16)
    if BUILTINS_HERE:
        with builtins_only():
            _, builtin = _compile(model, x, bf16=bf16)
        if os.environ.get("IQ_REGEN_GOLDEN"):
            golden = _golden()
            golden[key] = builtin
            GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        assert builtin == _golden().get(key), (key, builtin, "golden drifted: IQ_REGEN_GOLDEN=1 on torch 2.13")
    if key in KNOWN_GAPS:  # pinned: when it starts to match, take it out of KNOWN_GAPS
        assert ours != _golden()[key], (key, "matches torch now: remove it from KNOWN_GAPS")
        return
    if name in FOLDED_BY_US_ONLY:  # the same counters, plus the unary fold torch does not do
        unary = ("qlinear_unary_matcher_count", "qlinear_unary_matcher_nodes")
        assert {k: v for k, v in ours.items() if k not in unary} == _golden()[key], (key, ours)
        assert ours["qlinear_unary_matcher_count"] == 1 and "qlinear_unary_matcher_count" not in _golden()[key]
        return
    assert ours == _golden()[key], (key, "ours", ours, "torch 2.13 built-in", _golden()[key])


@pytest.mark.parametrize("name", ["conv_add_relu", "linear_add_relu", "maxpool_cat_flatten"])
@pytest.mark.parametrize("mode", ["cpp_wrapper", "dynamic"])
def test_counters_do_not_depend_on_wrapper_or_dynamic_shapes(name, mode, converted, our_passes_only):
    model, x = converted[name]
    out, ours = _compile(model, x, cpp_wrapper=mode == "cpp_wrapper", dynamic=mode == "dynamic")
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
    assert ours == _golden()[_key(name, False)], ours
