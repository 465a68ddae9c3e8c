"""Side-by-side benchmark: every mode of one model measured interleaved, and the contenders alone.

For each (model, batch), in a process of its own (`run_row`): build every mode first (compile
seconds recorded separately, each row's process starting with empty Inductor caches), then time them round-robin — one timed call of each mode per
round, after one untimed call that lets the previous mode's threads go quiet — so drift of the
machine (turbo, another process) hits all modes alike. Peer runtimes (benchmarks/peers.py) are
timed in the same rounds. Then each peer and our fastest int8 modes again, each alone in a
process of its own, as a user runs it: built, a warm-up block, a block of consecutive calls.
One process per row and per alone timing because a long process that has built every model
and runtime before runs the later ones slower (ResNet-50 bs16 int8 43 ms after the other
rows, 35 ms in its own process; OpenVINO's idle thread pool in the process made our calls
bimodal, 12 or 18 ms at BERT-base bs1). Figures are medians; ratios are against Inductor fp32
of the same row. Results: JSON lines + a markdown table (+ an optional PNG chart).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import torch

from inductor_quant import cpu_info, fast_options
from inductor_quant.compile_options import inductor_settings

from . import peers, zoo

# ----------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """How one benchmark column is built: `prepare(model, inputs) -> callable` (for int8 modes the
    quantization happens here, timed apart from the compile), run under bf16 autocast if `bf16`."""

    name: str
    prepare: Callable[[torch.nn.Module, tuple], Callable]
    bf16: bool = False          # run under CPU bf16 autocast
    linear_only: bool = False   # only meaningful for models made of linears (dynamic quant)
    needs_builtin: bool = False  # needs torch's own quantization fusions (gone in torch 2.14)
    inductor: tuple = ()        # extra torch._inductor.config settings for the compile, as pairs
    by_default: bool = True     # run when no --modes are named
    peer: bool = False          # another runtime (benchmarks/peers.py), built from the same model
    own_kernels: bool = True    # fused layers call our kernel layer (passes.set_own_kernels; the default)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _compile(model: torch.nn.Module, guard_filter_fn: Optional[Callable] = None) -> Callable:
    return torch.compile(model, dynamic=False,
                         options={"guard_filter_fn": guard_filter_fn} if guard_filter_fn else None)


def _quantized(model, inputs, *, dynamic: bool = False, ours: bool = True, reduce_range="auto",
               guard_filter_fn: Optional[Callable] = None):
    from inductor_quant import passes, quantize
    from inductor_quant.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_dynamic=dynamic, reduce_range=reduce_range)
    quantizer = X86InductorQuantizer().set_global(config)
    start = time.perf_counter()
    converted = quantize(copy.deepcopy(model), inputs, [inputs], quantizer=quantizer)
    _last_quantize_s[0] = time.perf_counter() - start
    if not ours:
        passes.uninstall()
    return _compile(converted, guard_filter_fn)


_last_quantize_s = [0.0]  # seconds the last _quantized() spent in export/prepare/calibrate/convert


def builtin_fusions_available() -> bool:
    """torch 2.13 still ships its own freezing-time qconv/qlinear fusions; 2.14 does not."""
    from torch._inductor.fx_passes import quantization

    return hasattr(quantization, "_register_quantization_weight_pack_pass")


# fast_options() split: its Inductor settings (freezing is on for every compile here) and the
# Dynamo guard filter torch.compile takes beside them
_FAST = tuple((k, v) for k, v in inductor_settings(fast_options()).items() if k != "freezing")
_FAST_GUARDS = fast_options()["guard_filter_fn"]

MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("eager_fp32", lambda model, inputs: model),
        Mode("inductor_fp32", lambda model, inputs: _compile(copy.deepcopy(model))),
        Mode("inductor_bf16", lambda model, inputs: _compile(copy.deepcopy(model)), bf16=True),
        Mode("int8", lambda model, inputs: _quantized(model, inputs)),
        Mode("int8_bf16", lambda model, inputs: _quantized(model, inputs), bf16=True),
        # the C++ wrapper: no Python between kernels (per-call overhead matters at batch 1)
        Mode("int8_cpp", lambda model, inputs: _quantized(model, inputs), inductor=(("cpp_wrapper", True),)),
        Mode("int8_dynamic", lambda model, inputs: _quantized(model, inputs, dynamic=True), linear_only=True),
        # inductor_quant.fast_options() for this CPU: C++ wrapper, Inductor's C++ GEMM template
        # for the int8 linears where its autotune was faster (AMX), no guards on the module
        Mode("int8_fast", lambda model, inputs: _quantized(model, inputs, guard_filter_fn=_FAST_GUARDS),
             inductor=_FAST),
        Mode("int8_bf16_fast", lambda model, inputs: _quantized(model, inputs, guard_filter_fn=_FAST_GUARDS),
             bf16=True, inductor=_FAST),
        # torch's oneDNN ops in place of our kernel layer (the fallback where it cannot load)
        Mode("int8_torchops", lambda model, inputs: _quantized(model, inputs), own_kernels=False, by_default=False),
        Mode("int8_torchops_cpp", lambda model, inputs: _quantized(model, inputs), inductor=(("cpp_wrapper", True),),
             own_kernels=False, by_default=False),
        Mode("int8_builtin", lambda model, inputs: _quantized(model, inputs, ours=False), needs_builtin=True),
        # 8-bit activations and weights whatever the CPU: without VNNI its layers stay fp32 (the
        # cost of a model quantized elsewhere with reduce_range=False); with VNNI the same as int8
        Mode("int8_8bit", lambda model, inputs: _quantized(model, inputs, reduce_range=False), by_default=False),
        # peers (`bench --peers ...`): prepared by run_model through peers.BUILDERS
        *(Mode(p.mode, lambda model, inputs: None, by_default=False, peer=True) for p in peers.PEERS.values()),
    )
}
BASELINE = "inductor_fp32"

# ----------------------------------------------------------------------------- measuring


@dataclass
class Result:
    model: str
    batch: int
    mode: str
    median_ms: Optional[float] = None     # interleaved with the other modes, round by round
    alone_ms: Optional[float] = None      # in a process of its own: a block of calls after a warm-up block
    alone_rounds_ms: Optional[list] = None  # with several alone rounds: each process's block median (alone_ms: their median)
    throughput: Optional[float] = None   # samples / s
    compile_s: Optional[float] = None      # torch.compile + first call (freezing, codegen, C++ build), cold caches
    quantize_s: Optional[float] = None     # int8 modes: export + prepare + calibrate + convert
    vs_inductor_fp32: Optional[float] = None  # speed-up (>1 is faster)
    sqnr_db: Optional[float] = None       # output vs eager fp32, same inputs
    cosine: Optional[float] = None
    fused: Optional[dict] = None          # passes.stats()["fused"] of this mode's compile
    unfused: Optional[list] = None
    error: Optional[str] = None
    note: Optional[str] = None             # e.g. bf16 emulated on this CPU
    machine: dict = field(default_factory=dict)


def machine_info(threads: int) -> dict:
    """The CPU as oneDNN sees it (inductor_quant.cpu_info()), threads and torch: written into
    every result and printed above every table."""
    info = cpu_info()
    return {"cpu": info.model, "isa": sorted(info.features), "cpu_summary": info.summary(), "vnni": info.vnni,
            "bf16_native": info.bf16_native, "onednn_cap": info.onednn_cap, "threads": threads,
            "torch": torch.__version__}


BF16_EMULATED = "bf16 is emulated on this CPU (no avx512_bf16 / amx_bf16 for oneDNN): ~10x slower than fp32"


def default_modes(modes: Iterable[str]) -> list[str]:
    """The modes worth running here by default: bf16 modes only where bf16 is native."""
    return [m for m in modes if MODES[m].by_default and (cpu_info().bf16_native or not MODES[m].bf16)]


def agreement(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(SQNR in dB, cosine) of `out` against `ref`."""
    ref, out = ref.detach().float().flatten(), out.detach().float().flatten()
    noise = (ref - out).pow(2).sum()
    sqnr = float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))
    return sqnr, float(torch.nn.functional.cosine_similarity(ref, out, dim=0))


def _call(fn: Callable, inputs: tuple, bf16: bool):
    with torch.no_grad(), _autocast(bf16):
        return fn(*inputs)


def run_model(name: str, batch: int, modes: Iterable[str], runs: int = 20, warmup: int = 3,
              progress: Callable[[str], None] = lambda s: None, alone: bool = False) -> list[Result]:
    """Build all modes (timing the compile), then time them interleaved, in this process; with
    `alone` (a process running one mode: `run_row`) also a block of consecutive calls."""
    entry = zoo.ZOO[name]
    model, inputs = zoo.build(name, batch)
    from inductor_quant import passes

    reference = _call(model, inputs, False)
    built: dict[str, tuple[Callable, Mode]] = {}
    results: dict[str, Result] = {}
    for mode_name in modes:
        mode = MODES[mode_name]
        res = results[mode_name] = Result(name, batch, mode_name)
        if mode.linear_only and entry.convs:
            res.error = "skipped: dynamic quantization is for linear models"
            continue
        if mode.needs_builtin and not builtin_fusions_available():
            res.error = f"skipped: torch {torch.__version__} has no built-in quantization fusions"
            continue
        if mode.bf16 and not cpu_info().bf16_native:
            res.note = BF16_EMULATED
        peer = next((p for p in peers.PEERS.values() if p.mode == mode_name), None)
        if peer and peer.missing():
            res.error = f"skipped: {', '.join(peer.missing())} not installed ({peers.INSTALL_HINT})"
            continue
        progress(f"{name} bs{batch}: building {mode_name}")
        _last_quantize_s[0] = 0.0
        start = time.perf_counter()
        passes.reset_stats()
        try:
            if peer:  # same weights, same calibration batches as our int8 modes
                built_peer = peers.BUILDERS[mode_name](model, inputs, [inputs], entry.transformer)
                fn, _last_quantize_s[0], res.note = built_peer.run, built_peer.quantize_s, built_peer.note
                out = _call(fn, inputs, False)
            else:
                with torch._inductor.config.patch(freezing=True, **dict(mode.inductor)), \
                        passes.own_kernels(mode.own_kernels):
                    fn = mode.prepare(model, inputs)
                    out = _call(fn, inputs, mode.bf16)  # compiles
        except Exception as e:  # a failing mode is reported, not fatal for the table
            res.error = f"{type(e).__name__}: {e}"[:300]
            continue
        finally:
            if not passes.is_installed():
                passes.install()  # the built-in mode uninstalls ours for its compile only
        res.quantize_s = _last_quantize_s[0] or None
        res.compile_s = time.perf_counter() - start - _last_quantize_s[0]
        res.sqnr_db, res.cosine = agreement(reference, out)
        if mode_name.startswith("int8"):
            res.fused, res.unfused = passes.stats()["fused"], passes.stats()["unfused"]
        built[mode_name] = (fn, mode)
    times: dict[str, list[float]] = {m: [] for m in built}
    order, shuffle = list(built), random.Random(0).shuffle
    for i in range(warmup + runs):
        # a mode pays for the caches the mode before it evicted (~4 % at ResNet-50 bs1, with the
        # order fixed): a new order every round, so no mode always follows the same one
        shuffle(order)
        for mode_name in order:
            fn, mode = built[mode_name]
            # one untimed call first: the previous mode's worker threads (OpenMP, OpenVINO's TBB,
            # ONNX Runtime's pool) keep spinning for a while after it returns and took 10-20 %
            # from whichever runtime came next (ResNet-50 bs1, 2 cores); alone-speed is the figure
            _call(fn, inputs, mode.bf16)
            start = time.perf_counter()
            _call(fn, inputs, mode.bf16)
            if i >= warmup:
                times[mode_name].append(time.perf_counter() - start)
        progress(f"{name} bs{batch}: round {i + 1}/{warmup + runs}")
    for mode_name, samples in times.items():
        med = statistics.median(samples)
        results[mode_name].median_ms = med * 1e3
        results[mode_name].throughput = batch / med
    # alone, as a user runs it: a warm-up block, then a block of timed calls in a row
    for mode_name, (fn, mode) in built.items() if alone else ():
        for _ in range(warmup + 2):
            _call(fn, inputs, mode.bf16)
        block = []
        for _ in range(runs):
            start = time.perf_counter()
            _call(fn, inputs, mode.bf16)
            block.append(time.perf_counter() - start)
        results[mode_name].alone_ms = statistics.median(block) * 1e3
        progress(f"{name} bs{batch}: {mode_name} alone")
    base = results.get(BASELINE)
    for res in results.values():
        if base and base.median_ms and res.median_ms:
            res.vs_inductor_fp32 = base.median_ms / res.median_ms
    torch._dynamo.reset()
    return list(results.values())


ALONE_OURS = 2  # how many of our fastest int8 modes (interleaved) are timed alone too


def run_row(name: str, batch: int, modes: list[str], runs: int, warmup: int, threads: int,
            alone: bool = True, progress: Callable[[str], None] = lambda s: None, alone_rounds: int = 1) -> list[Result]:
    """One (model, batch) row in a process of its own, then (with `alone`) each peer and our
    ALONE_OURS fastest int8 modes alone, each in another process; their block medians become
    the row's `alone_ms`. With `alone_rounds` > 1 the contenders take turns, one process each per
    round, and `alone_ms` is the median over the rounds: on a VM whose processes differ by more
    than the margins measured (the same mode alone 33 and 42 ms in two runs, docs/PERFORMANCE.md,
    section 4), one process per runtime decides the ratio by chance."""
    progress(f"{name} bs{batch}: every mode, interleaved")
    results = _in_child(name, batch, modes, runs, warmup, threads)
    if not alone:
        return results
    row = {r.mode: r for r in results}
    ours = sorted(_ours(row), key=lambda r: r.median_ms)[:ALONE_OURS]
    peers_run = [r for m, r in row.items() if MODES[m].peer and r.median_ms]
    if not peers_run:
        return results
    timings = {r.mode: [] for r in ours + peers_run}
    for round_ in range(alone_rounds):
        for r in ours + peers_run:
            progress(f"{name} bs{batch}: {r.mode} alone" + (f" ({round_ + 1}/{alone_rounds})" if alone_rounds > 1 else ""))
            [timed] = _in_child(name, batch, [r.mode], runs, warmup, threads, alone=True)
            if timed.alone_ms is not None:
                timings[r.mode].append(timed.alone_ms)
    for r in ours + peers_run:
        r.alone_ms = statistics.median(timings[r.mode]) if timings[r.mode] else None
        if alone_rounds > 1:
            r.alone_rounds_ms = timings[r.mode]
    return results


def _in_child(name: str, batch: int, modes: list[str], runs: int, warmup: int, threads: int,
              alone: bool = False) -> list[Result]:
    """`run_model` in a new Python process; its results come back as JSON lines."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.jsonl")
        argv = [sys.executable, "-P", "-m", "inductor_quant.benchmarks.runner", "--model", name, "--batch", str(batch),
                "--modes", *modes, "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
                "--out", out] + (["--alone"] if alone else [])
        # Inductor's on-disk caches start empty in every benchmark process: the compile column is a
        # cold compile, as on a fresh machine (with the caches of earlier runs it mixed cold and
        # warm: BERT-base bs1 int8 14.9 s in one run, 3.4 s in the next)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor-cache")}
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            return [Result(name, batch, m, error=f"the benchmark process failed: {tail[0]}"[:300]) for m in modes]
        return [Result(**json.loads(line)) for line in open(out)]


def _child_main(argv: Optional[list[str]] = None) -> int:
    """Entry of `_in_child`'s process."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--modes", nargs="+", required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--alone", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run_model(args.model, args.batch, args.modes, runs=args.runs, warmup=args.warmup, alone=args.alone)
    with open(args.out, "w") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
    return 0


def markdown_table(results: list[Result]) -> str:
    """Median time per mode (× = speed-up over Inductor fp32); int8 and peer cells also give the
    output's SQNR against eager fp32."""
    modes = list(dict.fromkeys(r.mode for r in results))
    marked = {r.mode for r in results if r.note == BF16_EMULATED}
    head = "| model | batch | " + " | ".join(m + (" (bf16 emulated)" if m in marked else "") for m in modes) + " |"
    lines = [head, "|" + "---|" * (len(modes) + 2)]
    for key in dict.fromkeys((r.model, r.batch) for r in results):
        row = {r.mode: r for r in results if (r.model, r.batch) == key}
        cells = []
        for m in modes:
            r = row.get(m)
            if r is None or r.median_ms is None:
                cells.append("—")
            else:
                cell = f"{r.median_ms:.1f} ms"
                extra = [f"{r.vs_inductor_fp32:.2f}×"] if r.vs_inductor_fp32 else []
                if _quantized_mode(m) and r.sqnr_db is not None:
                    extra.append(f"{r.sqnr_db:.1f} dB")
                cells.append(cell + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _quantized_mode(mode: str) -> bool:
    return mode.startswith("int8") or MODES[mode].peer


def _ours(row: dict[str, Result]) -> list[Result]:
    """Our int8 modes that ran in this row (torch's built-in path is not ours)."""
    return [r for m, r in row.items() if m.startswith("int8") and m != "int8_builtin" and r.median_ms]


def ours_fastest(row: dict[str, Result]) -> Optional[Result]:
    """Our fastest int8 mode of one (model, batch) row (torch's built-in path is not ours): the one
    whose worse timing (interleaved or alone) is the shortest, among the modes timed alone when
    any was; the peers play no part in the choice."""
    ours = _ours(row)
    ours = [r for r in ours if r.alone_ms] or ours
    return min(ours, key=lambda r: max(r.median_ms, r.alone_ms or 0.0), default=None)


def peer_ratio(peer: Result, ours: Result) -> tuple[float, float, float]:
    """(reported, interleaved, alone) speed ratios, peer time / ours (> 1: we are faster); the
    reported one is the worse of the two timings (alone: without it, the interleaved figure)."""
    interleaved = peer.median_ms / ours.median_ms
    alone = peer.alone_ms / ours.alone_ms if peer.alone_ms and ours.alone_ms else interleaved
    return min(interleaved, alone), interleaved, alone


def peer_table(results: list[Result]) -> str:
    """Ours against each peer: peer time / our time for our fastest int8 mode (> 1: we are
    faster), the worse of the interleaved and the alone ratio, with both outputs' SQNR against
    eager fp32. Empty without peer results."""
    peer_modes = [m for m in dict.fromkeys(r.mode for r in results) if MODES[m].peer]
    if not any(r.median_ms for r in results if r.mode in peer_modes):
        return ""
    lines = ["| model | batch | ours (fastest int8 mode, interleaved) | " + " | ".join(f"{m} | ratio" for m in peer_modes) + " |",
             "|" + "---|" * (3 + 2 * len(peer_modes))]
    for key in dict.fromkeys((r.model, r.batch) for r in results):
        row = {r.mode: r for r in results if (r.model, r.batch) == key}
        best = ours_fastest(row)
        cells = [f"{best.median_ms:.1f} ms {best.mode}, {best.sqnr_db:.1f} dB" if best else "—"]
        for m in peer_modes:
            r = row.get(m)
            if r is None or not r.median_ms:
                cells += ["—", "—"]
                continue
            cells.append(f"{r.median_ms:.1f} ms, {r.sqnr_db:.1f} dB")
            if best:
                worse, interleaved, alone = peer_ratio(r, best)
                both = r.alone_ms and best.alone_ms
                cells.append(f"**{worse:.2f}×**" + (f" ({interleaved:.2f} interleaved, {alone:.2f} alone)" if both else ""))
            else:
                cells.append("—")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: list[Result]) -> list[str]:
    """One line per distinct (mode, note): what a runtime chose or lacked on this CPU."""
    return [f"{mode}: {note}" for mode, note in dict.fromkeys((r.mode, r.note) for r in results if r.note)]


def compile_table(results: list[Result]) -> str:
    """Compile seconds per mode (int8: + quantization seconds), ratio to Inductor fp32's compile."""
    modes = [m for m in dict.fromkeys(r.mode for r in results) if m != "eager_fp32"]
    lines = ["| model | batch | " + " | ".join(modes) + " |", "|" + "---|" * (len(modes) + 2)]
    for key in dict.fromkeys((r.model, r.batch) for r in results):
        row = {r.mode: r for r in results if (r.model, r.batch) == key}
        base = row.get(BASELINE)
        cells = []
        for m in modes:
            r = row.get(m)
            if r is None or r.compile_s is None:
                cells.append("—")
                continue
            cell = f"{r.compile_s:.1f} s"
            if base and base.compile_s:
                cell += f" ({r.compile_s / base.compile_s:.2f}×)"
            if r.quantize_s:
                cell += f" + {r.quantize_s:.1f} s quantize"
            cells.append(cell)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(results: list[Result]) -> str:
    """Everything `bench` prints about one run, as markdown: the CPU line first."""
    machine = next((r.machine for r in results if r.machine), {})
    parts = [f"CPU: {machine.get('cpu_summary', '?')} | threads: {machine.get('threads', '?')} | "
             f"torch {machine.get('torch', '?')}", markdown_table(results)]
    if peer_table(results):
        parts += ["Against the peers (ratio = peer time / ours, > 1: ours is faster; the worse of the ratio "
                  "timed interleaved and timed alone)", peer_table(results)]
    parts += ["Compile time (× = vs Inductor fp32's compile; each row's process starts with empty Inductor caches, "
              "its modes compile in turn and may reuse kernels an earlier mode built)", compile_table(results)]
    parts += ["\n".join(f"- {line}" for line in notes(results))] if notes(results) else []
    return "\n\n".join(parts) + "\n"


README_BEGIN = "<!-- bench table: generated by `make bench-readme`, do not edit by hand -->"
README_END = "<!-- end of bench table -->"


def update_readme(path: str, results: list[Result], command: str) -> None:
    """Replace the block between README_BEGIN and README_END with this run's report."""
    text = open(path).read()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no generated bench block: add the two marker lines\n{README_BEGIN}\n{README_END}")
    date = time.strftime("%Y-%m-%d")
    block = f"{README_BEGIN}\n`{command}`, {date}:\n\n{report_markdown(results)}"
    open(path, "w").write(text[:start] + block + text[end:])


def write_outputs(results: list[Result], out_prefix: str, chart: bool = False) -> list[str]:
    written = [out_prefix + ".jsonl", out_prefix + ".md"]
    with open(written[0], "w") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
    with open(written[1], "w") as f:
        f.write(report_markdown(results))
    if chart:
        written.append(_bar_chart(results, out_prefix + ".png"))
    return written


def _bar_chart(results: list[Result], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.model, r.batch) for r in results))
    modes = [m for m in dict.fromkeys(r.mode for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        vals = [next((r.vs_inductor_fp32 or 0 for r in results if (r.model, r.batch) == k and r.mode == mode), 0)
                for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], vals, width, label=mode)
    ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(keys))], [f"{m}\nbs{b}" for m, b in keys])
    ax.set_ylabel("speed-up vs Inductor fp32")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    sys.exit(_child_main())
