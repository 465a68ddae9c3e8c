"""Where one compiled int8 call spends its time: oneDNN's primitives, ATen's layer around each
oneDNN op, Inductor's generated kernels, other ATen ops, and the Python between them.

    python -m inductor_quant.benchmarks.profile resnet50 --batch 1 --mode int8

Each part is measured on its own (medians over `--runs` calls), so their sum against the wall
time is a check, not an identity:
- wall: the call, timed alone;
- oneDNN primitives: the sum of oneDNN's own execution times, and how many ran (its verbose
  mode, switched on for separate calls; a child process runs the model so its stdout can be read);
- oneDNN ops: the torch profiler's time in the `onednn::` int8 ops (or our kernel layer's
  `iq_onednn::` ops) and their number; the layer around oneDNN is that minus the primitives they
  ran: argument checks, scale and zero-point handling, descriptor work, output allocation (and a
  few µs of profiler per op);
- Inductor kernels: the profiler's time in the generated `cpp_fused_*` kernels (compiled with
  Inductor's kernel profiling on, so each call is an event), and their number;
- other ATen: the profiler's time in the other outermost ATen ops the call makes (allocations,
  views, fallbacks);
- Dynamo's guards: the profiler's event for the guard check that starts each compiled call;
- Python wrapper: what none of those events covers, the one remainder (wall minus the rest).
The counts are checked against the generated code (tests/cli/test_bench_peers.py). Under the C++
wrapper the ops bypass the profiler: use the Python-wrapper mode of the same kernels (`int8`,
`int8_bf16`) for the split.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch

ENV_CHILD = "INDUCTOR_QUANT_PROFILE_CHILD"
MARK = "inductor-quant-profile-call"
PARTS = ("onednn_ops", "inductor_kernels", "other_aten", "dynamo_guards")  # what the profiler measures
COMPUTE_PRIMITIVES = ("convolution", "matmul", "inner_product", "deconvolution")  # one per oneDNN int8 op
_KERNEL_EVENT = re.compile(r"(graph_\d+_)?cpp_fused")
ONEDNN_OPS = ("onednn::", "iq_onednn::")  # torch's int8 ops and our kernel layer's (kernels/native.py)
DYNAMO_GUARDS = "TorchDynamo Cache Lookup"  # the profiler's event for Dynamo's guard check on each call


def _outermost(events) -> dict:
    """{part: [ms, count]} over one profiled call: the first event down each branch of the
    profiler's tree that belongs to a part (its children are inside it: not counted again)."""
    parts = {part: [0.0, 0] for part in PARTS}

    def visit(e):
        part = ("onednn_ops" if e.name.startswith(ONEDNN_OPS) else "inductor_kernels" if _KERNEL_EVENT.match(e.name)
                else "other_aten" if e.name.startswith("aten::")
                else "dynamo_guards" if e.name == DYNAMO_GUARDS else None)
        if part is None:
            for child in e.cpu_children:
                visit(child)
            return
        parts[part][0] += (e.time_range.end - e.time_range.start) / 1e3
        parts[part][1] += 1

    for e in events:
        if e.cpu_parent is None:
            visit(e)
    return parts


def _child(model_name: str, batch: int, mode_name: str, runs: int) -> None:
    from inductor_quant import generated_code
    from inductor_quant.kernels import compat

    from . import runner, zoo

    model, inputs = zoo.build(model_name, batch)
    mode = runner.MODES[mode_name]
    with torch._inductor.config.patch(freezing=True, **{"cpp.enable_kernel_profile": True}, **dict(mode.inductor)):
        fn = mode.prepare(model, inputs)
        _, codes = compat.run_and_get_code(lambda: runner._call(fn, inputs, mode.bf16))
    code = "\n".join(codes or ())
    walls = []
    for _ in range(runs + 3):
        start = time.perf_counter()
        runner._call(fn, inputs, mode.bf16)
        walls.append(time.perf_counter() - start)
    profiled = []
    for _ in range(runs + 1):  # the first profiled call starts the profiler up: not kept
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            runner._call(fn, inputs, mode.bf16)
        profiled.append(_outermost(prof.events()))
    for _ in range(runs):  # oneDNN prints each primitive's execution time to stdout
        print(MARK, flush=True)
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            runner._call(fn, inputs, mode.bf16)
    print(MARK, flush=True)
    result = {"wall_ms": statistics.median(walls[3:]) * 1e3,
              "code_onednn_int8_calls": sum(generated_code.onednn_int8_calls(code).values()),
              "code_inductor_kernel_calls": generated_code.inductor_kernel_calls(code)}
    for part in profiled[0]:
        result[f"{part}_ms"] = statistics.median(p[part][0] for p in profiled[1:])
        result[f"{part}_calls"] = statistics.median(p[part][1] for p in profiled[1:])
    print("RESULT " + json.dumps(result), flush=True)


def _primitives(stdout: str) -> tuple[float, float, float]:
    """(ms, compute primitives, all primitives) per call: medians over the calls between MARK lines."""
    calls, current = [], None
    for line in stdout.splitlines():
        if line == MARK:
            if current is not None:
                calls.append(current)
            current = [0.0, 0, 0]
        elif line.startswith("onednn_verbose,") and ",primitive,exec," in line and current is not None:
            kind = line.split(",primitive,exec,", 1)[1].split(",")[1]
            current[0] += float(line.rsplit(",", 1)[1])
            current[1] += kind in COMPUTE_PRIMITIVES
            current[2] += 1
    if not calls:
        return 0.0, 0, 0
    return tuple(statistics.median(c[i] for c in calls) for i in range(3))


def profile(model_name: str, batch: int, mode_name: str, runs: int = 20, threads: int = 2) -> dict:
    env = {**os.environ, ENV_CHILD: "1"}
    out = subprocess.run([sys.executable, "-m", "inductor_quant.benchmarks.profile", model_name, "--batch",
                          str(batch), "--mode", mode_name, "--runs", str(runs), "--threads", str(threads)],
                         env=env, capture_output=True, text=True, check=True).stdout
    measured = json.loads(next(line[len("RESULT "):] for line in out.splitlines() if line.startswith("RESULT ")))
    primitives_ms, compute_primitives, primitives = _primitives(out)
    r = {"model": model_name, "batch": batch, "mode": mode_name, **measured,
         "onednn_primitives_ms": primitives_ms, "onednn_compute_primitives": compute_primitives,
         "onednn_primitives": primitives}
    r["aten_around_onednn_ms"] = r["onednn_ops_ms"] - primitives_ms  # two measurements: >= 0 unless one is off
    r["measured_ms"] = sum(r[f"{part}_ms"] for part in PARTS)
    r["python_ms"] = r["wall_ms"] - r["measured_ms"]  # the remainder: the wrapper between the events
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="int8")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if os.environ.get(ENV_CHILD):
        _child(args.model, args.batch, args.mode, args.runs)
        return 0
    from inductor_quant import cpu_info

    r = profile(args.model, args.batch, args.mode, args.runs, args.threads)
    print(f"CPU: {cpu_info().summary()} | threads: {args.threads} | torch {torch.__version__}")
    print(f"{r['model']} bs{r['batch']} {r['mode']}: {r['wall_ms']:.2f} ms per call = oneDNN primitives "
          f"{r['onednn_primitives_ms']:.2f} ({r['onednn_compute_primitives']:.0f} calls) + ATen around oneDNN "
          f"{r['aten_around_onednn_ms']:.2f} + Inductor kernels {r['inductor_kernels_ms']:.2f} "
          f"({r['inductor_kernels_calls']:.0f} calls) + other ATen {r['other_aten_ms']:.2f} + Dynamo's guards "
          f"{r['dynamo_guards_ms']:.2f} + Python wrapper {r['python_ms']:.2f} (the remainder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
