"""Random valid graphs over what the X86 quantizer annotates, as JSON-able specs.

A spec is plain data, so a failing graph can be saved, minimized and replayed:

    {"seed": 7, "input": [2, 4, 9, 9], "quant": "static",
     "ops": [{"op": "conv", "in": [0], "kw": {...}}, {"op": "relu", "in": [1]}, ...],
     "outputs": [2]}

Value 0 is the input; op i produces value i + 1. `SpecModel(spec)` builds the nn.Module (weights
drawn from `seed`); `generate(seed)` draws a spec. Shapes are found by running each op as it is
drawn, so every spec is valid by construction. Every op keeps the batch dimension symbolic
(flatten(1), reshape via x.shape[0]), so the same graph also exports with a dynamic batch.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MAX_NUMEL = 12_000   # per sample; keeps compiles and eager runs small
MAX_CHANNELS = 24

# ----------------------------------------------------------------------------- ops

UNARY: dict[str, Callable] = {
    "relu": F.relu,
    "relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
    "hardtanh": F.hardtanh,
    "hardswish": F.hardswish,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
POOL = {
    "max": (F.max_pool1d, F.max_pool2d, F.max_pool3d),
    "avg": (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
    "adaptive_avg": (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
}
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _apply(op: dict, mod: nn.Module | None, xs: list[torch.Tensor]) -> torch.Tensor:
    """Run one op of a spec (`mod` holds its parameters, if any)."""
    name, kw, x = op["op"], op.get("kw", {}), xs[0]
    if name in ("conv", "linear", "layer_norm"):
        return mod(x)
    if name in UNARY:
        return UNARY[name](x)
    if name == "add":
        return xs[0] + xs[1]
    if name == "add_relu":
        return F.relu(xs[0] + xs[1])
    if name == "add_inplace":  # never into the input or a view of it (a minimized spec may ask)
        return xs[0].add_(xs[1]) if op["in"][0] != 0 and xs[0]._base is None else xs[0] + xs[1]
    if name == "cat":
        return torch.cat(xs, dim=kw["dim"])
    if name == "pool":
        fn = POOL[kw["kind"]][x.dim() - 3]
        if kw["kind"] == "adaptive_avg":
            return fn(x, kw["size"])
        return fn(x, kw["kernel"], kw["stride"], kw["padding"])
    if name == "flatten":
        return torch.flatten(x, kw["start"])
    if name == "reshape":  # merge the last two dims, batch kept symbolic
        return x.reshape(x.shape[0], *x.shape[1:-2], x.shape[-2] * x.shape[-1])
    if name == "permute":
        return x.permute(*kw["dims"])
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "attention":
        return _attention(*xs, kw["heads"], kw["mask"])
    if name == "rms_norm":
        return _rms_norm(x)
    raise ValueError(f"unknown op {name!r}")


def _attention(q, k, v, heads: int, mask: str) -> torch.Tensor:
    """Multi-head self-attention on [B, S, W] q, k, v as a model writes it (matmul, scale, an
    additive mask, softmax, matmul), which Inductor fuses into one attention call."""
    s, w = q.shape[1], q.shape[2]
    d = w // heads
    split = lambda t: t.reshape(t.shape[0], s, heads, d).permute(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    if mask == "causal":
        scores = scores + torch.full((s, s), -1e4).triu(1)
    elif mask == "padding":  # the last third of the keys masked out
        scores = scores + torch.where(torch.arange(s) >= s - s // 3, -1e4, 0.0).view(1, 1, 1, s)
    ctx = scores.softmax(-1) @ split(v)
    return ctx.permute(0, 2, 1, 3).reshape(ctx.shape[0], s, w)


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm as LLMs write it: computed in fp32 whatever the input's dtype, then cast back. The
    `.float()` exports a dtype assertion (fp32, as traced) that int8-mixed-bf16 would break, where
    the input is bf16: convert drops those assertions (inductor_quant/convert.py)."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x)


def _module(op: dict, shape: tuple) -> nn.Module | None:
    kw = op.get("kw", {})
    if op["op"] == "conv":
        cls = CONV[len(shape) - 3]
        return cls(shape[1], kw["out"], kw["kernel"], kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                   bias=kw["bias"])
    if op["op"] == "linear":
        return nn.Linear(shape[-1], kw["out"], bias=kw["bias"])
    if op["op"] == "layer_norm":
        return nn.LayerNorm(shape[-1])
    return None


class SpecModel(nn.Module):
    """The nn.Module a spec describes; parameters drawn from the spec's seed."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        torch.manual_seed(spec["seed"])
        shapes = [tuple(spec["input"])]
        self.layers = nn.ModuleDict()
        with torch.no_grad():
            vals = [torch.zeros(shapes[0])]
            for i, op in enumerate(spec["ops"]):
                shares = op.get("kw", {}).get("shares")
                mod = self.layers[str(shares)] if shares is not None else _module(op, vals[op["in"][0]].shape)
                if mod is not None:
                    if shares is None:
                        self._randomize(mod)
                    self.layers[str(i)] = mod  # a shared module: the same parameters, called twice
                vals.append(_apply(op, mod, [vals[j] for j in op["in"]]))

    @staticmethod
    def _randomize(mod: nn.Module):
        """Default init makes tiny biases; draw them (and LayerNorm affine) at a useful scale."""
        for name, p in mod.named_parameters():
            if name == "bias" or isinstance(mod, nn.LayerNorm):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if isinstance(mod, nn.LayerNorm) and name == "weight" else 0))

    def values(self, x) -> list:
        """Every value of the graph for input x (value 0 is x)."""
        vals = [x]
        for i, op in enumerate(self.spec["ops"]):
            vals.append(_apply(op, self.layers[str(i)] if str(i) in self.layers else None, [vals[j] for j in op["in"]]))
        return vals

    def forward(self, x):
        vals = self.values(x)
        outs = tuple(vals[i] for i in self.spec["outputs"])
        return outs[0] if len(outs) == 1 else outs


class Bundle(nn.Module):
    """Several specs side by side: input k feeds spec k's graph, the outputs are every spec's
    outputs in order. One quantize and one compile check them all (the fuzzer's throughput: a
    compile's fixed cost, C++ builds, autotuning setup, AOTI packaging, is paid once per bundle).
    The graphs share nothing (own inputs, own parameters), so no rewrite joins two of them."""

    def __init__(self, specs: list[dict]):
        super().__init__()
        self.graphs = nn.ModuleList(SpecModel(s) for s in specs)

    def forward(self, *xs):
        outs: list = []
        for graph, x in zip(self.graphs, xs):
            out = graph(x)
            outs.extend(out if isinstance(out, tuple) else (out,))
        return tuple(outs)


def value_shapes(spec: dict) -> list[tuple]:
    """Shape of every value of a spec (value 0 is the input)."""
    with torch.no_grad():
        return [tuple(v.shape) for v in SpecModel(spec).values(torch.zeros(spec["input"]))]


def inputs(spec: dict, batch: int | None = None, salt: int = 0) -> torch.Tensor:
    """A reproducible input for `spec` (its batch, or `batch`); salt picks another draw."""
    g = torch.Generator().manual_seed(spec["seed"] * 1000 + salt)
    shape = list(spec["input"])
    if batch is not None:
        shape[0] = batch
    return torch.randn(shape, generator=g) * 2 + 0.5


# ----------------------------------------------------------------------------- drawing


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _draw_conv(r: random.Random, shape: tuple) -> dict | None:
    cin, spatial = shape[1], shape[2:]
    if r.random() < 0.25:  # depthwise (channel multiplier 1 or 2)
        groups, out = cin, cin * r.choice((1, 2))
    else:
        groups = r.choice(_divisors(cin)) if r.random() < 0.3 else 1
        out = groups * r.randint(1, max(1, MAX_CHANNELS // groups))
    kernel = r.choice((1, 2, 3, 3, 5))
    dilation = r.choice((1, 1, 1, 2))
    kw = {"out": min(out, MAX_CHANNELS * 2), "kernel": kernel, "stride": r.choice((1, 1, 2, 3)),
          "padding": r.randint(0, (kernel - 1) * dilation // 2 + 1), "dilation": dilation, "groups": groups,
          "bias": r.random() < 0.8}
    if kw["out"] % groups:
        return None
    return kw


def _draw_pool(r: random.Random, shape: tuple) -> dict:
    kind = r.choice(("max", "max", "avg", "adaptive_avg"))
    if kind == "adaptive_avg":
        return {"kind": kind, "size": r.choice((1, 1, 2))}
    kernel = r.choice((2, 3))
    return {"kind": kind, "kernel": kernel, "stride": r.choice((1, 2)), "padding": r.randint(0, kernel // 2)}


def _candidates(r: random.Random, vals: list[tuple]) -> list[tuple[str, list[int], dict]]:
    """Ops that could come next: (op, input value ids, kwargs). Mostly extends the newest value,
    sometimes an older one (branches, tensors with several users)."""
    src = len(vals) - 1 if r.random() < 0.7 else r.randrange(len(vals))
    shape = vals[src]
    rank = len(shape)
    out: list[tuple[str, list[int], dict]] = []
    if rank in (3, 4, 5):
        for _ in range(3):  # the quantizer's main target: weight it up
            kw = _draw_conv(r, shape)
            if kw:
                out.append(("conv", [src], kw))
        out.append(("pool", [src], _draw_pool(r, shape)))
        out.append(("flatten", [src], {"start": r.choice((1, 2)) if rank > 3 else 1}))
        out.append(("reshape", [src], {}))
    if rank >= 2:
        for _ in range(2):
            out.append(("linear", [src], {"out": r.choice((1, 3, 8, 16, 32)), "bias": r.random() < 0.8}))
    out.append((r.choice(sorted(UNARY)), [src], {}))
    if r.random() < 0.3:
        out.append((r.choice(("layer_norm", "softmax")), [src], {}))
    if rank in (3, 4):
        dims = (0, 2, 1) if rank == 3 else r.choice(((0, 2, 3, 1), (0, 3, 1, 2)))
        out.append(("permute", [src], {"dims": list(dims)}))
    twins = [i for i, s in enumerate(vals) if s == shape]
    if twins:
        other = r.choice(twins)
        out.append((r.choice(("add", "add", "add_relu")), [src, other], {}))
    mates = [i for i, s in enumerate(vals) if len(s) == rank and rank >= 2 and s[:1] + s[2:] == shape[:1] + shape[2:]]
    if mates:  # 2 to 6 inputs (int8.cat takes any number)
        out.append(("cat", [src] + [r.choice(mates) for _ in range(r.choice((1, 1, 2, 3, 4, 5)))], {"dim": 1}))
    return out


def _fits(shape: tuple) -> bool:
    numel = 1
    for s in shape[1:]:
        numel *= s
    return 0 < numel <= MAX_NUMEL and all(s >= 1 for s in shape)


def _input_shape(r: random.Random) -> list[int]:
    batch = r.choice((1, 2, 3))
    rank = r.choices((2, 3, 4, 5), weights=(2, 2, 5, 1))[0]
    if rank == 2:
        return [batch, r.choice((4, 8, 17, 32))]
    channels = r.choice((1, 3, 4, 8, 16))
    if rank == 3:
        return [batch, channels, r.randint(3, 24)]
    if rank == 4:
        return [batch, channels, r.randint(1, 12), r.randint(1, 12)]
    return [batch, r.choice((1, 3, 4)), r.randint(2, 6), r.randint(2, 6), r.randint(2, 6)]


# ----------------------------------------------------------------------------- motifs
# Shapes the newest rewrites meet, drawn as a few ops at once. Each is (name, fn): fn(r, vals, src)
# returns [(op, inputs, kwargs), ...] with inputs as value ids, new values numbered from
# len(vals) on, plus values that should also be graph outputs; None when src does not suit it.


def _linear_op(src: int, out: int, bias: bool = True) -> tuple:
    return ("linear", [src], {"out": out, "bias": bias})


def _siblings_with_residual(r: random.Random, vals: list, src: int):
    """Two linears on one input (merged into one GEMM); the first is also a later linear's
    residual (a linear `sum` into a merge's slice: issue 18's bug); the second is returned,
    viewed or concatenated with the sum."""
    shape = vals[src]
    if len(shape) < 2:
        return None
    n, width = len(vals), r.choice((8, 16))
    ops = [_linear_op(src, width), _linear_op(src, r.choice((8, 16))),   # n: a, n + 1: b
           (r.choice(sorted(UNARY)), [src], {}),                            # n + 2: z, another input
           _linear_op(n + 2, width),                                        # n + 3: l3(z)
           (r.choice(("add", "add_relu")), [n + 3, n], {})]                 # n + 4: l3(z) + a
    use = r.choice(("return", "view", "cat"))
    if use == "view" and len(shape) >= 3:
        ops.append(("flatten", [n + 1], {"start": 1}))
    elif use == "cat":  # both keep src's leading dims
        ops.append(("cat", [n + 4, n + 1], {"dim": len(shape) - 1}))
    return ops, [n + 1]


def _residual_chain(r: random.Random, vals: list, src: int):
    """x -> linear -> + x -> linear -> + ... (BERT's residual stream): each sum is requantized
    for the next linear (linear + add + quantize), the last one read by a final linear."""
    shape = vals[src]
    if len(shape) < 2 or shape[-1] > 32:
        return None
    ops, v, n = [], src, len(vals)
    for _ in range(r.randint(2, 4)):
        ops.append(_linear_op(v, shape[-1], r.random() < 0.8))
        ops.append((r.choice(("add", "add", "add_relu")), [n + len(ops) - 1, v], {}))
        v = n + len(ops) - 1
    ops.append(_linear_op(v, r.choice((3, 8, 16))))
    return ops, []


def _linear_on_permuted(r: random.Random, vals: list, src: int):
    """A linear over a permuted 3-D input (non-contiguous), as attention heads and channel mixing do."""
    if len(vals[src]) != 3:
        return None
    n = len(vals)
    return [("permute", [src], {"dims": [0, 2, 1]}), _linear_op(n, r.choice((3, 8, 16)))], []


def _inplace_add_after_linears(r: random.Random, vals: list, src: int):
    """a.add_(b) on two linears' outputs, then a unary: functionalized, an N-D linear's add and the
    unary after it have a view there and back between them (graph_rewrites.drop_noop_views)."""
    shape = vals[src]
    if len(shape) < 2:
        return None
    n, width = len(vals), r.choice((8, 16))
    return [_linear_op(src, width), _linear_op(src, width), ("add_inplace", [n, n + 1], {}),
            (r.choice(("relu", "relu", "gelu", "hardtanh")), [n + 2], {})], []


def _self_attention(r: random.Random, vals: list, src: int):
    """Q, K, V linears on one [B, S, F] input (merged into one GEMM), attention over them (our
    kernel layer's `attention` in place of torch's), an output projection with a residual."""
    shape = vals[src]
    if len(shape) != 3:
        return None
    n, width = len(vals), r.choice((8, 16))
    heads, mask = r.choice((1, 2, 4)), r.choice(("none", "none", "causal", "padding"))
    ops = [_linear_op(src, width), _linear_op(src, width), _linear_op(src, width),   # n, n + 1, n + 2
           ("attention", [n, n + 1, n + 2], {"heads": heads, "mask": mask}),         # n + 3
           _linear_op(n + 3, width), (r.choice(("add", "add_relu")), [n + 4, n], {})]
    return ops, []


MOTIFS = (("siblings_with_residual", _siblings_with_residual), ("residual_chain", _residual_chain),
          ("linear_on_permuted", _linear_on_permuted), ("inplace_add_after_linears", _inplace_add_after_linears))


def _try_motif(r: random.Random, spec: dict, vals: list, probe: list, extra_outputs: list, fn=None) -> bool:
    """Append one motif's ops (`fn`, else one drawn) if they all run on the probe values and fit;
    else leave spec as is."""
    fn = fn or r.choice(MOTIFS)[1]
    src = len(vals) - 1 if r.random() < 0.7 else r.randrange(len(vals))
    drawn = fn(r, vals, src)
    if drawn is None:
        return False
    ops, outs = drawn
    new_vals, new_probe = list(vals), list(probe)
    try:
        for name, ins, kw in ops:
            op = {"op": name, "in": ins, "kw": kw}
            with torch.no_grad():
                out = _apply(op, _module(op, new_probe[ins[0]].shape), [new_probe[j] for j in ins])
            if not _fits(tuple(out.shape)):
                return False
            new_probe.append(out)
            new_vals.append(tuple(out.shape))
    except (RuntimeError, ValueError, IndexError):
        return False
    spec["ops"] += [{"op": name, "in": ins, "kw": kw} for name, ins, kw in ops]
    vals[:], probe[:] = new_vals, new_probe
    extra_outputs += outs
    return True


def _append(spec: dict, vals: list, probe: list, ops: list) -> None:
    """Append ops that are known to run (drawn around one just checked), with their values."""
    for op in ops:
        with torch.no_grad():
            probe.append(_apply(op, _module(op, probe[op["in"][0]].shape), [probe[j] for j in op["in"]]))
        spec["ops"].append(op)
        vals.append(tuple(probe[-1].shape))


def generate(seed: int, max_ops: int = 7) -> dict:
    """Draw a valid spec: 2..max_ops ops, at least one conv or linear."""
    r = random.Random(seed)
    siblings = random.Random(seed * 31 + 7)  # its own stream: the main draws stay as they were
    shared = random.Random(seed * 53 + 1)  # likewise
    spec = {"seed": seed, "input": _input_shape(r), "quant": "static", "ops": [], "outputs": []}
    if len(spec["input"]) == 3 and random.Random(seed * 37 + 11).random() < 0.3:  # its own stream too
        # tokens x features: linears with >= 256 rows, which template_options() leaves to the autotune of
        # Inductor's GEMM template (passes/own_calls.py, TEMPLATE_FROM_ROWS); fewer rows call our kernel
        spec["input"] = [max(2, spec["input"][0]), 128, spec["input"][2]]
    vals = [tuple(spec["input"])]
    probe = [torch.zeros(vals[0])]
    motifs = random.Random(seed * 131 + 3)  # its own stream, like the siblings'
    extra_outputs: list = []
    n_ops = r.randint(2, max_ops)
    attention = random.Random(seed * 41 + 13)  # its own stream: graphs without it stay as they were
    if len(vals[0]) == 3 and attention.random() < 0.25:
        _try_motif(attention, spec, vals, probe, extra_outputs, _self_attention)
    upcast = random.Random(seed * 61 + 37)  # its own stream: graphs without it stay as they were
    norms = random.Random(seed * 71 + 43)  # likewise
    tries = 0
    while len(spec["ops"]) < n_ops and tries < 200:
        tries += 1
        if motifs.random() < 0.12 and _try_motif(motifs, spec, vals, probe, extra_outputs):
            continue
        name, src, kw = r.choice(_candidates(r, vals))
        op = {"op": name, "in": src, "kw": kw}
        try:
            mod = _module(op, probe[src[0]].shape)
            with torch.no_grad():
                out = _apply(op, mod, [probe[j] for j in src])
        except (RuntimeError, ValueError, IndexError):
            continue  # e.g. a conv whose window does not fit: draw again
        if not _fits(tuple(out.shape)):
            continue
        spec["ops"].append(op)
        vals.append(tuple(out.shape))
        probe.append(out)
        linear_at = len(spec["ops"]) - 1
        if name == "linear" and siblings.random() < 0.3:  # a sibling on the same input, both used (Q/K/V)
            twin = {"op": "linear", "in": src, "kw": {"out": siblings.choice((3, 8, 16)), "bias": kw["bias"]}}
            both = {"op": "cat", "in": [len(vals) - 1, len(vals)], "kw": {"dim": len(out.shape) - 1}}
            _append(spec, vals, probe, [twin, both])
        if name == "linear" and shared.random() < 0.1:  # the same Linear called again: one weight, two GEMMs
            width, again = vals[src[0]][-1], linear_at
            others = [i for i, v in enumerate(vals) if v[-1] == width and i != src[0]]
            into = shared.choice(others) if others else None
            extras = [] if into is not None else [{"op": "relu", "in": src, "kw": {}}]
            into = len(vals) if into is None else into
            extras.append({"op": "linear", "in": [into], "kw": {**kw, "shares": again}})
            _append(spec, vals, probe, extras)
        if name in ("conv", "linear") and r.random() < 0.5:  # the fusion targets: conv/linear + post-op
            follow = r.choice(sorted(UNARY) + ["add", "add_relu"])
            twins = [i for i, s in enumerate(vals[:-1]) if s == vals[-1]]
            if follow in UNARY or twins:
                spec["ops"].append({"op": follow, "in": [len(vals) - 1] + ([r.choice(twins)] if follow not in UNARY else []),
                                    "kw": {}})
                probe.append(_apply(spec["ops"][-1], None, [probe[j] for j in spec["ops"][-1]["in"]]))
                vals.append(tuple(probe[-1].shape))
        if name in ("conv", "linear") and upcast.random() < 0.1:  # an RMSNorm in fp32 on what it made
            _append(spec, vals, probe, [{"op": "rms_norm", "in": [len(vals) - 1], "kw": {}}])
        if name == "linear" and norms.random() < 0.1:  # a layer norm quantized for the next linear
            ln = len(vals)  # its value's index; post-norm (read again by a residual add) or pre-norm
            ops = [{"op": "layer_norm", "in": [ln - 1], "kw": {}},
                   {"op": "linear", "in": [ln], "kw": {"out": vals[-1][-1], "bias": True}}]
            if norms.random() < 0.5:
                ops.append({"op": "add", "in": [ln + 1, ln], "kw": {}})
            _append(spec, vals, probe, ops)
    if not any(op["op"] in ("conv", "linear") for op in spec["ops"]):
        return generate(seed + 10_000_019, max_ops)  # deterministic redraw
    spec["outputs"] = [len(vals) - 1]
    if len(vals) > 3 and r.random() < 0.3:  # a second output from inside the graph
        spec["outputs"].insert(0, r.randrange(1, len(vals) - 1))
    spec["outputs"] = list(dict.fromkeys(extra_outputs + spec["outputs"]))  # motifs' returned values too
    has_linear = any(op["op"] == "linear" for op in spec["ops"])
    spec["quant"] = "dynamic" if has_linear and r.random() < 0.25 else "static"
    if has_linear and spec["quant"] == "static" and random.Random(seed * 17 + 5).random() < 0.15:
        spec["quant"] = "fp16_weight"  # linears fp16-weight, the rest int8 (its own stream: older seeds keep their kind)
    if spec["quant"] == "static" and random.Random(seed * 23 + 7).random() < 0.12:
        spec["quant"] = "xnnpack"  # XNNPACK-style int8 activations with zero points (its own stream too)
    if has_linear and spec["quant"] == "static" and random.Random(seed * 29 + 3).random() < 0.15:
        spec["quant"] = "woq_int8"  # linears weight-only int8 (float activations), the rest int8 (own stream)
    if has_linear and spec["quant"] == "static" and random.Random(seed * 47 + 29).random() < 0.12:
        spec["quant"] = "dyn_token"  # linears dynamic int8 per token, the rest int8 static (own stream)
        if random.Random(seed * 59 + 31).random() < 0.5:
            spec["smooth"] = 0.5  # SmoothQuant first (harness.quantized)
    int4_ready = any(op["op"] == "linear" and vals[op["in"][0]][-1] % 32 == 0 for op in spec["ops"])
    if int4_ready and spec["quant"] == "static" and random.Random(seed * 43 + 17).random() < 0.6:
        spec["quant"] = "woq_int4"  # linears of 32k inputs weight-only int4 (harness.int4_linears), own stream
        if random.Random(seed * 67 + 41).random() < 0.5:
            spec["int4_zero_points"] = True  # asymmetric groups (a zero point each), own stream
            if random.Random(seed * 71 + 43).random() < 0.5:
                spec["int4_zero_point_domain"] = "float"  # least-squares fit, float zero points (own stream)
    if int4_ready and spec["quant"] == "woq_int8" and random.Random(seed * 79 + 53).random() < 0.5:
        spec["woq_group"] = True  # linears of 32k inputs group-wise int8 (harness.int4_linears), own stream
    if random.Random(seed * 19 + 2).random() < 0.25:  # upstream's recipe: every chain ends in q/dq
        spec["recipe"] = "upstream"
    return spec


def describe(spec: dict) -> str:
    """One line: input shape and op chain, e.g. `[2, 4, 9, 9] conv(0) relu(1) add(2,0) | out 3`."""
    ops = " ".join(f"{op['op']}({','.join(map(str, op['in']))})" for op in spec["ops"])
    recipe = ("/upstream" if spec.get("recipe") == "upstream" else "") + ("/smooth" if spec.get("smooth") else "") + (
        "/g32" if spec.get("woq_group") else "") + (
        ("/fzp" if spec.get("int4_zero_point_domain") == "float" else "/zp") if spec.get("int4_zero_points") else "")
    return f"{spec['quant']}{recipe} {spec['input']} {ops} | out {','.join(map(str, spec['outputs']))}"
