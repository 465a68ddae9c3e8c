"""Trace a model to the graph Inductor's freezing stage sees (ATen, Inductor decompositions,
fake values), without torch.compile, and run our phases on it."""

from __future__ import annotations

import collections

import torch
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx


def stage_graph(model, inputs, bf16=False):
    """(graph module, its flat real inputs): buffers become placeholders, like the joint stage."""
    names = [n for n, _ in model.named_buffers()]
    bufs = [b for _, b in model.named_buffers()]

    def fn(*args):
        return torch.func.functional_call(model, dict(zip(names, args[: len(names)])), args[len(names):])

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        gm = make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode="fake")(*bufs, *inputs)
    gm.graph.eliminate_dead_code()  # make_fx leaves dead casts behind; the real stage has none
    gm.recompile()
    return gm, (*bufs, *inputs)


def targets(gm) -> collections.Counter:
    return collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
