"""The main job in one command: quantize a model, compile it, show fusion, speed and accuracy.

Runs the benchmark runner on one zoo model (fp32 Inductor, bf16 Inductor, our int8, and our int8
under `fast_options()`; all in this process, interleaved) and prints the fusion report of the
int8 compile, the speed table and how closely int8 agrees with fp32.

The output is for a person: Inductor's autotune tables (printed when `fast_options()` autotunes
the int8 linears) and other libraries' warnings are kept out of it, for the demo's compiles
only. Our own warnings (they start with "inductor_quant:" and name a fix) still show.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator

import torch

DEFAULT_MODEL = "resnet50"
DEFAULT_MODES = ("inductor_fp32", "inductor_bf16", "int8", "int8_fast")  # int8_fast: fast_options()
OUR_WARNINGS = "inductor_quant:"  # how every warning of ours that names a fix begins


@contextlib.contextmanager
def quiet_compiles() -> Iterator[None]:
    """No autotune tables and no other library's warnings inside; ours still show."""
    with warnings.catch_warnings(), torch._inductor.config.patch(
            autotune_num_choices_displayed=0,  # the per-op "AUTOTUNE ..." table on stderr
            max_autotune_report_choices_stats=False):  # the "Autotune Choices Stats" JSON line
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", message=OUR_WARNINGS)
        yield


def run(model: str = DEFAULT_MODEL, batch: int = 1, threads: int = 2, runs: int = 20,
        modes: tuple[str, ...] = DEFAULT_MODES, progress: Callable[[str], None] = lambda s: None,
        out=sys.stdout) -> int:
    from inductor_quant.benchmarks import runner

    torch.set_num_threads(threads)
    info = runner.machine_info(threads)
    print(f"inductor-quant demo: {model}, batch {batch} | {threads} threads | torch {info['torch']}", file=out)
    print(f"CPU: {info['cpu_summary']}", file=out)
    skipped = [m for m in modes if m not in runner.default_modes(modes)]
    if skipped:
        print(f"skipped {', '.join(skipped)}: {runner.BF16_EMULATED}", file=out)
        modes = tuple(runner.default_modes(modes))
    with quiet_compiles():
        results = runner.run_model(model, batch, modes, runs=runs, warmup=3, progress=progress)
    progress("")
    int8 = next((r for r in results if r.mode == "int8"), None)
    print("\n== Fusion (int8, our passes) ==", file=out)
    if int8 is None or int8.fused is None:
        print(f"int8 mode failed: {int8.error if int8 else 'not run'}", file=out)
    else:
        for fusion_id, n in sorted(int8.fused.items()):
            print(f"  {fusion_id:32} {n:4d}", file=out)
        from inductor_quant.report import BY_DESIGN, LAYER_OPS

        unfused = int8.unfused or []
        layers = [u for u in unfused if u[0] in LAYER_OPS]
        print(f"  quantized conv/linear left unfused: {len(layers)}", file=out)
        for op, node, reason, code in unfused:
            print(f"    {'fp32 (by design)' if code in BY_DESIGN else 'UNFUSED'} {op} {node}: {reason}", file=out)
    print("\n== Speed (median of {} runs; × = speed-up vs Inductor fp32) ==".format(runs), file=out)
    print(runner.markdown_table(results), file=out)
    print("\n== Accuracy vs eager fp32 (same input) ==", file=out)
    for r in results:
        if r.sqnr_db is not None:
            print(f"  {r.mode:14} SQNR {r.sqnr_db:6.1f} dB   cosine {r.cosine:.5f}", file=out)
        elif r.error:
            print(f"  {r.mode:14} {r.error}", file=out)
    return 0 if all(r.error is None for r in results) else 1
