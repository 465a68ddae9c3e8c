"""Where one compiled int8 call spends its time: oneDNN's primitives, ATen's layer around each
oneDNN op, and everything else (Inductor's own kernels and the wrapper).

    python -m inductor_quant.benchmarks.profile resnet50 --batch 1 --mode int8_cpp

The split, per call (medians over `--runs` calls):
- wall: the call, timed alone;
- oneDNN primitives: the sum of oneDNN's own execution times (its verbose mode, switched on for
  separate calls; a child process runs the model so its stdout can be read);
- ATen around oneDNN: the torch profiler's time in the `onednn::` int8 ops (calls of their own)
  minus the primitives they ran: argument checks, scale and zero-point handling, descriptor
  lookup, output allocation (and a few µs of profiler per op);
- the rest: wall minus the `onednn::` ops (Inductor's kernels, the wrapper, the template GEMMs).
Under the C++ wrapper the ops bypass the profiler: use the Python-wrapper mode of the same
kernels (`int8`, `int8_bf16`) for the split.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

ENV_CHILD = "INDUCTOR_QUANT_PROFILE_CHILD"
MARK = "inductor-quant-profile-call"


def _child(model_name: str, batch: int, mode_name: str, runs: int) -> None:
    from . import runner, zoo

    model, inputs = zoo.build(model_name, batch)
    mode = runner.MODES[mode_name]
    with torch._inductor.config.patch(freezing=True, **dict(mode.inductor)):
        fn = mode.prepare(model, inputs)
        runner._call(fn, inputs, mode.bf16)
    walls = []
    for _ in range(runs + 3):
        start = time.perf_counter()
        runner._call(fn, inputs, mode.bf16)
        walls.append(time.perf_counter() - start)
    ops = []
    for _ in range(runs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            runner._call(fn, inputs, mode.bf16)
        ops.append(sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith("onednn::q")) / 1e3)
    for _ in range(runs):  # oneDNN prints each primitive's execution time to stdout
        print(MARK, flush=True)
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            runner._call(fn, inputs, mode.bf16)
    print(MARK, flush=True)
    print(f"RESULT wall_ms={statistics.median(walls[3:]) * 1e3:.3f} onednn_ops_ms={statistics.median(ops):.3f}")


def profile(model_name: str, batch: int, mode_name: str, runs: int = 20, threads: int = 2) -> dict:
    env = {**os.environ, ENV_CHILD: "1"}
    out = subprocess.run([sys.executable, "-m", "inductor_quant.benchmarks.profile", model_name, "--batch",
                          str(batch), "--mode", mode_name, "--runs", str(runs), "--threads", str(threads)],
                         env=env, capture_output=True, text=True, check=True).stdout
    per_call, current = [], None
    result = {}
    for line in out.splitlines():
        if line == MARK:
            if current is not None:
                per_call.append(current)
            current = 0.0
        elif line.startswith("onednn_verbose,") and ",primitive,exec," in line and current is not None:
            current += float(line.rsplit(",", 1)[1])
        elif line.startswith("RESULT "):
            result = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    primitives = statistics.median(per_call) if per_call else 0.0
    wall = result["wall_ms"]
    ops = min(result["onednn_ops_ms"], wall)  # the profiler's own cost can push the ops past the call
    return {"model": model_name, "batch": batch, "mode": mode_name, "wall_ms": wall, "onednn_primitives_ms": primitives,
            "aten_around_onednn_ms": max(0.0, ops - primitives), "rest_ms": wall - ops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="int8_cpp")
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
          f"{r['onednn_primitives_ms']:.2f} + ATen around oneDNN {r['aten_around_onednn_ms']:.2f} + "
          f"Inductor kernels and wrapper {r['rest_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
