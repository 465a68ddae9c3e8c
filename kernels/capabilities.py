"""What the oneDNN int8 ops take as fused post-ops: one record per post-op, read by everyone.

The quantizer reports a chain as fusable from these records, the passes trace their search
patterns and fold what a layer takes, the builders pass the oneDNN attribute name and the
references compute the same math in plain PyTorch. Adding a post-op is one `PostOp` row here
plus its tests (tests/kernels/test_builders.py checks every row against the real kernel).

Layers are named as the quantizer names them: "conv1d", "conv2d", "conv3d", "linear".
The rows were probed by calling the ops on torch 2.13 (the tests pin them on every torch run).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as F

CONV2D_ONLY = frozenset({"conv2d"})


@dataclasses.dataclass(frozen=True)
class PostOp:
    """One unary post-op.

    name       our name: fusion ids (`post.<name>`), the quantizer's pattern names
    attr       the oneDNN attribute name the builders pass (`Unary.name`)
    algorithm  oneDNN's algorithm argument ("" when the op has none)
    aten_ops   the ATen overloads (`"relu.default"`) that are this post-op in an exported graph
    layers     the layers whose int8 op takes it ("conv2d", "linear", ...), at fp32, bf16 and
               requantized outputs alike
    after_add  also allowed after a binary add (oneDNN's binary post-op slot takes a unary)
    search     y -> post(y) as the pass traces it (None: the passes never fold it)
    constants  ((name, tracing value), ...) the traced pattern binds by name
    arguments  the constants that are the op's arguments, in the order oneDNN takes them;
               every other bound constant must equal its tracing value when matched
    math       the reference: (y, scalars) -> post(y)
    """

    name: str
    attr: str
    math: Callable
    aten_ops: tuple = ()
    layers: frozenset = frozenset()
    algorithm: str = ""
    after_add: bool = False
    search: Optional[Callable] = None
    constants: tuple = ()
    arguments: tuple = ()

    def fuses_with(self, layer: str) -> bool:
        return layer in self.layers


LINEAR = frozenset({"linear"})

POST_OPS = (
    PostOp("relu", "relu", lambda y, s: F.relu(y), ("relu.default", "relu_.default"),
           frozenset({"conv1d", "conv2d", "linear"}), after_add=True, search=lambda y: torch.relu(y)),
    PostOp("hardtanh", "hardtanh", lambda y, s: F.hardtanh(y, s[0], s[1]),
           ("hardtanh.default", "hardtanh_.default", "relu6.default", "relu6_.default"),
           CONV2D_ONLY | LINEAR, search=lambda y: F.hardtanh(y, -1.25, 2.75),
           constants=(("min_val", -1.25), ("max_val", 2.75)), arguments=("min_val", "max_val")),
    PostOp("hardswish", "hardswish", lambda y, s: F.hardswish(y), ("hardswish.default", "hardswish_.default"),
           CONV2D_ONLY | LINEAR, search=lambda y: F.hardswish(y), constants=(("three", 3), ("six", 6))),
    PostOp("silu", "swish", lambda y, s: F.silu(y), ("silu.default", "silu_.default"),
           CONV2D_ONLY | LINEAR, search=lambda y: F.silu(y), constants=(("one", 1),)),
    PostOp("gelu", "gelu", lambda y, s: F.gelu(y), ("gelu.default", "gelu_.default"), LINEAR, algorithm="none",
           search=lambda y: F.gelu(y), constants=(("half", 0.5), ("sqrt1_2", 0.7071067811865476), ("one", 1))),
    # the same ATen op as gelu (approximate="tanh"): the quantizer sees both as "gelu"
    PostOp("gelu_tanh", "gelu", lambda y, s: F.gelu(y, approximate="tanh"), (), LINEAR, algorithm="tanh",
           search=lambda y: F.gelu(y, approximate="tanh"),
           constants=(("half", 0.5), ("k", 0.7978845608028654), ("c", 0.044715), ("one", 1))),
    PostOp("leaky_relu", "leaky_relu", lambda y, s: F.leaky_relu(y, s[0]), ("leaky_relu.default", "leaky_relu_.default"),
           LINEAR, search=lambda y: F.leaky_relu(y, 0.0625), constants=(("slope", 0.0625),), arguments=("slope",)),
    PostOp("tanh", "tanh", lambda y, s: torch.tanh(y), ("tanh.default", "tanh_.default"), LINEAR,
           search=lambda y: torch.tanh(y)),
    # annotated as a post-op (one q/dq around the chain) but no int8 op takes it
    PostOp("sigmoid", "sigmoid", lambda y, s: torch.sigmoid(y), ("sigmoid.default", "sigmoid_.default")),
)
BY_NAME = {p.name: p for p in POST_OPS}
_BY_ATTR = {(p.attr, p.algorithm): p for p in POST_OPS}

# Binary post-ops (add, then an optional `after_add` unary): conv2d (qconv2d_pointwise.binary)
# and linear (qlinear_pointwise.binary).
BINARY_LAYERS = frozenset({"conv2d", "linear"})


def layer_name(kind: str, conv_rank: int = 0) -> str:
    """The passes' (kind, rank) in the layers' vocabulary: ("qconv", 2) -> "conv2d"."""
    return "linear" if kind == "qlinear" else f"conv{conv_rank}d"


def foldable() -> tuple:
    """The post-ops the passes search for (those some layer takes)."""
    return tuple(p for p in POST_OPS if p.search is not None and p.layers)


def by_attr(attr: str, algorithm: str = "") -> PostOp:
    """The record for a oneDNN attribute (`Unary.name`, `Unary.algorithm`)."""
    return _BY_ATTR.get((attr, algorithm)) or next(p for p in POST_OPS if p.attr == attr)


def lowering_accepts_output(x_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Inductor 2.13's IR for these ops (mkldnn_ir.py) gives a requantized output the activation's
    dtype; only fp32/bf16 outputs get their own. So u8 in -> s8 out (or s8 -> u8) would be mislabeled."""
    return out_dtype in (torch.float32, torch.bfloat16) or out_dtype == x_dtype
