"""Compile a model under freezing + no_grad and read what runs: generated code, stats, outputs."""

from __future__ import annotations

import torch
from torch._inductor.utils import run_and_get_code

import inductor_quant.passes as iq_passes
from inductor_quant.generated_code import count as onednn_calls  # noqa: F401  (re-exported for the tests)
from inductor_quant.generated_code import float_compute_calls, prepacks_at_runtime  # noqa: F401


def compile_and_run(model, inputs, cpp_wrapper=False, bf16=False):
    torch._dynamo.reset()
    iq_passes.reset_stats()
    snapshot = [t.clone() for t in inputs]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), torch._inductor.config.patch(cpp_wrapper=cpp_wrapper):
        with autocast:
            ref = model(*inputs)
            out, codes = run_and_get_code(torch.compile(model), *inputs)
    for before, after in zip(snapshot, inputs):
        assert torch.equal(before, after), "compiled model mutated its input"
    return ref, out, "\n".join(codes), iq_passes.stats()


def compile_once_and_run(model, batches, dynamic=True):
    """One compile (dynamic batch by default) run on each input tuple of `batches`: the outputs as
    (eager, compiled) pairs, the generated code of every graph it made, and the stats."""
    torch._dynamo.reset()
    iq_passes.reset_stats()
    compiled = torch.compile(model, dynamic=dynamic)
    pairs, codes = [], []
    with torch.no_grad():
        for inputs in batches:
            out, code = run_and_get_code(compiled, *inputs)
            pairs.append((model(*inputs), out))
            codes += code
    return pairs, "\n".join(codes), iq_passes.stats()
