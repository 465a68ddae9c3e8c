"""How a fused op adds its extra input (a residual), decided from the graph as it is.

oneDNN's binary `sum` accumulates into the extra input's buffer: Inductor lowers it that way
(it marks the buffer mutated and hands it out as the result), and ATen's conv writes into it
eagerly too. Our graph is functional, so `sum` is correct only where overwriting the extra input
cannot be seen: it is a tensor of its own, computed in this graph (not an input, constant or
view, nor a copy Inductor may drop as a no-op), and every other reader of it runs before the
fused op because it feeds one of the fused op's inputs. `add` (linear only) writes a new output
and is correct wherever the kernel builds it (Inductor's lowering gets the extra input as a
buffer: lowerings.py).

The choice is made twice, from the graph at hand each time: when a rule folds the add (so it
fuses only what it can realize), and in `settle`, after every rewrite, where a `sum` that a later
rewrite made unsafe (a sibling merge that turned the extra input into a slice, say) becomes an
`add` or is taken apart again into fused op + add.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.fx

from inductor_quant.kernels import compat, probe
from inductor_quant.kernels import onednn as K

from .fused import Fused, call, emit_before, record, replace_with
from .kernel_limits import gemm_template_may_run
from .match import args_of, val

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def writable_in_place(other: torch.fx.Node, reader: torch.fx.Node, also_reading: tuple = ()) -> bool:
    """May `reader` (the fused op, or the node it will replace) overwrite `other`? `also_reading`:
    nodes that become part of the fused op (the matched add, a dequantize it absorbs)."""
    if not isinstance(other, torch.fx.Node) or other.op != "call_function":
        return False
    schema = getattr(other.target, "_schema", None)
    if schema is None or any(r.alias_info for r in schema.returns) or compat.inductor_may_drop(other):
        return False
    if val(other) is None:
        return False
    own = record(reader)  # the fused op may read other once: as the accumulator it already writes
    reads = []
    torch.fx.node.map_arg((reader.args, reader.kwargs), lambda n: reads.append(n) if n is other else None)
    reads = len(reads)
    if reads > (1 if own is not None and own.other is other else 0):
        return False  # it would read other as an input and write it in one call
    return all(u is reader or u in also_reading or _feeds(u, reader) for u in other.users)


def _feeds(node: torch.fx.Node, target: torch.fx.Node) -> bool:
    """node computes (part of) an input of target: searched forward, in graph order up to it."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for u in n.users:
            if u is target:
                return True
            if u not in seen and u < target:
                seen.add(u)
                todo.append(u)
    return False


def add_builds(out_dtype: torch.dtype, other: torch.fx.Node) -> bool:
    """oneDNN builds the int8 matmul with `add` for this output and extra input (without AVX-512
    it has none with a bf16 extra input)."""
    v = val(other)
    return v is not None and v.is_floating_point() and probe.qlinear_binary_builds(out_dtype, v.dtype, "add")


def as_add(binary: K.Binary) -> K.Binary:
    """The same binary post-op adding its float extra input (`add`: a new output; the lowering
    realizes the extra input, lowerings.py)."""
    return dataclasses.replace(binary, name="add", other=K.QParams())


def linear_accumulation(other: torch.fx.Node, out_dtype: torch.dtype, reader: torch.fx.Node,
                        also_reading: tuple = ()) -> Optional[str]:
    """`sum` or `add` for a fused linear with a float extra input, or None if neither is right here.
    Inductor's C++ GEMM template computes `sum` wrong (kernel_limits), so under it only `add`."""
    if not gemm_template_may_run() and out_dtype == val(other).dtype and val(other).is_contiguous() \
            and writable_in_place(other, reader, also_reading):
        return "sum"
    return "add" if add_builds(out_dtype, other) else None


@dataclasses.dataclass(frozen=True)
class Requantized:
    """How a fused op with a binary post-op and a requantized output adds its extra input."""

    other: torch.fx.Node
    binary: K.Binary


def requantized_accumulation(f: Fused, out: K.Output, reader: torch.fx.Node) -> Optional[Requantized]:
    """With an int8 output, `sum` adds an extra input of the output's dtype at its own qparams,
    in place: the int8 tensor `r` under a dq(r) extra input, when r may be overwritten. A linear
    can instead `add` a float extra input (a dequantized one included)."""
    extra = f.other
    if extra.target is qd.dequantize_per_tensor.default:
        a = args_of(extra)
        r = extra.args[0]
        if (a["dtype"] == out.dtype and (f.kind == "qconv" or not gemm_template_may_run())
                and len(extra.users) == 1 and writable_in_place(r, reader, (extra,))):
            rq = K.QParams(float(a["scale"]), int(a["zero_point"]))
            return Requantized(r, dataclasses.replace(f.binary, name="sum", other=rq))
    if f.kind == "qlinear" and add_builds(out.dtype, extra):
        return Requantized(extra, as_add(f.binary))
    return None


def settle(graph: torch.fx.Graph) -> int:
    """After every rewrite: each fused `sum` whose extra input may no longer be overwritten becomes
    an `add` (linear), else the op is taken apart into fused op + add (+ relu, quantize).
    Returns the ops changed."""
    changed = 0
    for node in list(graph.nodes):
        f = record(node)
        if f is None or f.binary is None or f.binary.name != "sum" or writable_in_place(f.other, node):
            continue
        changed += 1
        other = f.other
        if not val(other).is_floating_point():  # the int8 extra input of a requantized op
            q = f.binary.other
            info = torch.iinfo(val(other).dtype)
            other = call(graph, node, qd.dequantize_per_tensor.default, other, q.scale, q.zero_point, info.min,
                         info.max, val(other).dtype)
        if f.kind == "qlinear" and add_builds(f.out.dtype, other):
            replace_with(node, dataclasses.replace(f, other=other, binary=as_add(f.binary)))
        else:
            unfold(node, f, other)
        graph.erase_node(node)
    return changed


def unfold(node: torch.fx.Node, f: Fused, other: torch.fx.Node) -> torch.fx.Node:
    """fused(x, binary=(other, unary), out) -> out(unary(fused(x) + other)) as separate ops; the
    caller erases `node`."""
    g = node.graph
    float_dtype = f.out.dtype if not f.out.quantized else torch.float32
    s = call(g, node, aten.add.Tensor, emit_before(node, dataclasses.replace(
        f, binary=None, other=None, out=K.Output(float_dtype))), other)
    if f.binary.unary.name == "relu":
        s = call(g, node, aten.relu.default, s)
    elif f.binary.unary.name != "none":
        raise NotImplementedError(f"taking apart a fused op with post-op {f.binary.unary.name} after its add")
    if f.out.quantized:
        info = torch.iinfo(f.out.dtype)
        s = call(g, node, qd.quantize_per_tensor.default, s, f.out.scale, f.out.zero_point, info.min, info.max,
                 f.out.dtype)
    elif val(s).dtype != f.out.dtype:
        s = call(g, node, torch.ops.prims.convert_element_type.default, s, f.out.dtype)
    node.replace_all_uses_with(s)
    return s
