"""Differential fuzzer: random quantized graphs, eager converted model vs torch.compile.

    python tests/fuzz/fuzz.py --graphs 500                 # the full sweep (every config of harness.CONFIGS)
    python tests/fuzz/fuzz.py --graphs 250 --shard 1/2     # half of it (run 0/2 and 1/2 at once)
    python tests/fuzz/fuzz.py --graphs 500 --bundle 4      # up to 4 graphs of one quantizer per compile
    python tests/fuzz/fuzz.py --graphs 20 --only attention,woq_int4   # only graphs a new rule meets
    python tests/fuzz/fuzz.py --graphs 8 --only woq_int4_fzp          # int4 with float zero points
    python tests/fuzz/fuzz.py --graphs 8 --only woq_int8_group        # group-wise int8 weights
    python tests/fuzz/fuzz.py --summary fuzz-out           # merge the shards' results
    python tests/fuzz/fuzz.py --replay fuzz-out/repro-*.json

Per graph: one JSON line in <out>/results.jsonl (resumable: graphs already there are skipped).
The sweep runs in a child process that notes the graph, the config and the outcomes so far in
<out>/in-flight-<shard>.json; if the child dies (a segfault inside a kernel) the parent records
that compile as a crash and starts a new child, which goes on with the graph's other configs.
With --bundle N, the graphs of each run of N seeds that share a quantizer are compiled together
(a graph failing in its bundle is checked again alone; a child dying in a bundle makes the next
child run that bundle's graphs one by one, so the death is pinned on one graph).
A crash or mismatch is saved as <out>/repro-<seed>-<config>.json (spec + config + error + the
replay command); the first failure of each kind is minimized (ops dropped while it still fails
the same way) before saving. A failure the unquantized model shows too is torch's ("upstream"):
saved, counted apart, not a failure of ours.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphs  # noqa: E402
import inductor_quant  # noqa: E402
import harness  # noqa: E402
from minimize import minimize  # noqa: E402

HERE = os.path.relpath(os.path.abspath(__file__))


def save_repro(out_dir: str, spec: dict, outcome: harness.Outcome, minimized_from: int | None = None) -> str:
    path = os.path.join(out_dir, f"repro-{spec['seed']}-{outcome.config}.json")
    record = {"replay": f"python {HERE} --replay {path}", "cpu": cpu_facts(), "config": outcome.config, "status": outcome.status,
              "stage": outcome.stage, "error": outcome.error, "graph": graphs.describe(spec), "spec": spec,
              "ops_before_minimizing": minimized_from, "trace": outcome.trace}
    if outcome.bundle:  # fails only when compiled with these graphs: the replay compiles them together
        record["bundle"] = outcome.bundle
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def cpu_facts() -> dict:
    """What oneDNN ran on (results differ by CPU kind: kernels/cpu.py): kept with every result."""
    info = inductor_quant.cpu_info()
    return {"summary": info.summary(), "features": sorted(info.features), "onednn_cap": info.onednn_cap}


def signature(o: harness.Outcome) -> str:
    return f"{o.status}:{o.stage}:{o.error.split(':')[0] if o.status == 'crash' else ''}"


def seeds_of(args) -> list[int]:
    """This shard's seeds: --graphs of them from --seed on; with --only, the first --graphs whose
    spec has one of those ops or quant kinds (a new rule's targeted sweep, e.g. attention,woq_int4;
    `woq_int4_fzp`: int4 groups with float zero points; `woq_int8_group`: group-wise int8)."""
    shard, shards = (int(v) for v in args.shard.split("/"))
    candidates = (s for s in range(args.seed, args.seed + 1000 * args.graphs * shards) if s % shards == shard)
    if not args.only:
        return [s for _, s in zip(range(args.graphs), candidates)]
    wanted = set(args.only.split(","))
    picked = []
    for seed in candidates:
        spec = graphs.generate(seed)
        kinds = {op["op"] for op in spec["ops"]} | {spec["quant"]}
        if spec.get("int4_zero_point_domain") == "float":
            kinds.add("woq_int4_fzp")
        if spec.get("woq_group"):
            kinds.add("woq_int8_group")
        if wanted & kinds:
            picked.append(seed)
            if len(picked) == args.graphs:
                break
    return picked


def sweep(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    done = set()
    if os.path.exists(results):
        done = {json.loads(line)["seed"] for line in open(results)}
    configs = harness.FULL_CONFIGS + harness.PRODUCT_CONFIGS if args.full_matrix else harness.CONFIGS
    seeds = seeds_of(args)
    if os.environ.get("FUZZ_SELFTEST_DIE_AT") is None:  # the supervisor's test compiles nothing (`check`)
        harness.install_our_passes()  # our patterns traced or read, registrations
    ctx = {"args": args, "configs": configs, "results": results, "seen_kinds": set(), "failures": 0,
           "in_flight": in_flight_path(args), "done": done}
    resumed = json.load(open(ctx["in_flight"])) if os.path.exists(ctx["in_flight"]) else {}
    position = {seed: i for i, seed in enumerate(seeds)}
    for start in range(0, len(seeds), args.bundle):
        # the chunk's pending graphs by quantizer, each group one bundle; keyed by the seed asked for
        # (a spec drawn again after a failed draw carries another seed: graphs.generate)
        groups: dict = {}
        for seed in seeds[start:start + args.bundle]:
            if seed not in done:
                spec = graphs.generate(seed)
                groups.setdefault(harness.quantizer_key(spec), {})[seed] = spec
        for group in groups.values():
            alone = (len(group) == 1 or resumed.get("seed") in group  # a graph's own run was cut short
                     or (resumed.get("split") and resumed.get("bundle") == list(group)))  # the bundle's process died
            if alone:
                for seed, spec in group.items():
                    _sweep_alone(ctx, seed, spec, resumed if resumed.get("seed") == seed else {}, position, len(seeds))
            else:
                _sweep_bundle(ctx, group, position, len(seeds))
    print(summarize(args.out))
    return 1 if ctx["failures"] else 0


def _sweep_alone(ctx: dict, seed: int, spec: dict, resumed: dict, position: dict, total: int) -> None:
    """One graph, one compile per config; after a process death, the configs not yet reached."""
    state = resumed or {"seed": seed, "outcomes": []}
    start = time.perf_counter()
    outcomes = [harness.Outcome(**o) for o in state["outcomes"]]
    for c in ctx["configs"][len(outcomes):]:
        _write_json(ctx["in_flight"], {**state, "outcomes": [o.to_json() for o in outcomes], "config": c.name})
        outcomes.append(check(spec, c))
    _write_json(ctx["in_flight"], {**state, "outcomes": [o.to_json() for o in outcomes], "config": None})
    _record(ctx, seed, spec, outcomes, time.perf_counter() - start, position, total, died=bool(state.get("died")))


def _sweep_bundle(ctx: dict, group: dict, position: dict, total: int) -> None:
    """Graphs of one quantizer compiled together per config (`harness.check_many`: a graph that
    fails is checked again alone). If the process dies, the supervisor marks the bundle split and
    the next process runs its graphs one by one (so a death is pinned on one graph)."""
    start = time.perf_counter()
    per_graph: list[list] = [[] for _ in group]
    for c in ctx["configs"]:
        _write_json(ctx["in_flight"], {"bundle": list(group), "config": c.name})
        for outcomes, outcome in zip(per_graph, check_many(list(group.values()), c)):
            outcomes.append(outcome)
    seconds = (time.perf_counter() - start) / len(group)
    for (seed, spec), outcomes in zip(group.items(), per_graph):
        _record(ctx, seed, spec, outcomes, seconds, position, total, bundle=list(group))


def _record(ctx: dict, seed: int, spec: dict, outcomes: list, seconds: float, position: dict, total: int,
            died: bool = False, bundle: list | None = None) -> None:
    """Save repros of the failures (the first of each kind minimized), append the graph's row."""
    args = ctx["args"]
    bad = [o for o in outcomes if o.status != "ok"]
    for o in bad:
        ctx["failures"] += o.status != "upstream"
        small, n_before = spec, None
        if args.minimize and signature(o) not in ctx["seen_kinds"] and not died and not o.bundle:
            small = minimize(spec, harness.Config.parse(o.config), o)
            n_before = len(spec["ops"])
        ctx["seen_kinds"].add(signature(o))
        path = save_repro(args.out, small, harness.check(small, harness.Config.parse(o.config)) if small is not spec else o,
                          n_before)
        print(f"  {o.status} [{o.config}] {o.stage}: {o.error[:160]}\n  -> {path}", flush=True)
    record = {"seed": seed, "cpu": cpu_facts(), "graph": graphs.describe(spec), "ops": [op["op"] for op in spec["ops"]],
              "seconds": round(seconds, 1), "outcomes": [o.to_json() for o in outcomes]}
    if bundle:
        record["bundle"] = bundle
    _append_result(ctx["results"], record)
    if os.path.exists(ctx["in_flight"]):
        os.remove(ctx["in_flight"])
    ctx["done"].add(seed)
    status = "ok" if not bad else ", ".join(f"{o.status}@{o.config}" for o in bad)
    print(f"[{position[seed] + 1}/{total}] seed {seed} {record['seconds']}s {status} | "
          f"{graphs.describe(spec)[:110]}", flush=True)


def check(spec: dict, config: harness.Config) -> harness.Outcome:
    """harness.check; FUZZ_SELFTEST_DIE_AT=<seed> swaps it for a stand-in that passes every graph
    but kills the process at that seed's second config (the supervisor's own test)."""
    die_at = os.environ.get("FUZZ_SELFTEST_DIE_AT")
    if die_at is None:
        return harness.check(spec, config)
    if spec["seed"] == int(die_at) and config == harness.CONFIGS[1]:
        os.kill(os.getpid(), signal.SIGSEGV)
    return harness.Outcome(config.name, "ok")


def check_many(group: list[dict], config: harness.Config) -> list[harness.Outcome]:
    """harness.check_many; under FUZZ_SELFTEST_DIE_AT, `check`'s stand-in for each graph."""
    if os.environ.get("FUZZ_SELFTEST_DIE_AT") is None:
        return harness.check_many(group, config)
    return [check(spec, config) for spec in group]


def in_flight_path(args) -> str:
    return os.path.join(args.out, f"in-flight-{args.shard.replace('/', 'of')}.json")


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _append_result(results: str, record: dict) -> None:
    with open(results, "a") as f:
        f.write(json.dumps(record) + "\n")


def supervise(args, argv: list[str]) -> int:
    """Run the sweep in child processes. When one dies, the config it was compiling is recorded as
    a crash (as torch's if the unquantized model kills a process too) and a new child goes on with
    the graph's remaining configs (a death while minimizing only ends the minimizing)."""
    os.makedirs(args.out, exist_ok=True)
    in_flight, worst = in_flight_path(args), 0
    while True:
        for path in drop_truncated_libraries():
            print(f"  removed a truncated library from Inductor's cache (a killed compile left it): {path}", flush=True)
        rc = subprocess.call([sys.executable, os.path.abspath(__file__), *argv, "--worker"])
        if not os.path.exists(in_flight):
            return max(worst, rc)
        state = json.load(open(in_flight))
        if "bundle" in state:  # died inside a bundle: its graphs go again one by one, which pins the death
            if state.get("split"):
                print(f"  bundle {state['bundle']}: the worker died before running its graphs alone; stopping", flush=True)
                return 1
            print(f"  bundle {state['bundle']}: the fuzzing process was {_cause(rc)}; its graphs run alone", flush=True)
            _write_json(in_flight, {**state, "config": None, "split": True})
            continue
        if state["config"] is None and state.get("died"):  # died again after its configs had run
            print(f"  seed {state['seed']}: the worker died twice after checking it; stopping", flush=True)
            return 1
        if state["config"] is not None:
            outcome = harness.Outcome(state["config"], "crash", "process", f"the fuzzing process was {_cause(rc)}")
            float_rc = subprocess.call([sys.executable, os.path.abspath(__file__), "--float-check",
                                        str(state["seed"]), state["config"]])
            if float_rc < 0:  # the unquantized model kills the process as well: torch's bug
                outcome.status = "upstream"
                outcome.error += f" | upstream: the float model's compile was {_cause(float_rc)} too"
            state["outcomes"].append(outcome.to_json())
            worst = max(worst, int(outcome.status == "crash"))
            print(f"  {outcome.status} [{state['config']}] seed {state['seed']}: {outcome.error}; continuing", flush=True)
        _write_json(in_flight, {**state, "config": None, "died": True})


def drop_truncated_libraries(cache: str | None = None, older_than_s: float = 600.0) -> list[str]:
    """Remove the shared libraries in Inductor's on-disk cache that a killed compile left cut short
    (no full ELF header). A process or VM killed while the C++ compiler wrote one leaves the file
    in place, and every later compile of that code loads it and fails ("file too short"): a crash
    of the cache, not of the graph. Only files older than `older_than_s` go (a sweep running beside
    this one may be writing a library right now). Returns the removed paths."""
    if cache is None:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        cache = cache_dir()
    removed, now = [], time.time()
    for path in glob.glob(os.path.join(cache, "**", "*.so"), recursive=True):
        try:
            if now - os.path.getmtime(path) < older_than_s:
                continue
            with open(path, "rb") as f:
                header = f.read(64)
        except OSError:  # removed meanwhile by another process
            continue
        if len(header) < 64 or header[:4] != b"\x7fELF":
            os.remove(path)
            removed.append(path)
    return removed


def _cause(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"


def float_check(seed: int, config: str) -> int:
    """Child process of the supervisor: compile and run the unquantized graph (it may die)."""
    if os.environ.get("FUZZ_SELFTEST_DIE_AT") == str(seed):  # the supervisor's test: no real compile
        if os.environ.get("FUZZ_SELFTEST_FLOAT_DIES"):
            os.kill(os.getpid(), signal.SIGSEGV)
        print("the float model is fine (self-test stand-in)")
        return 0
    print(harness.float_model_fails(graphs.generate(seed), harness.Config.parse(config)) or "the float model is fine")
    return 0


def summarize(out_dir: str) -> str:
    """Markdown summary of every results.jsonl line under out_dir."""
    rows = [json.loads(line) for path in glob.glob(os.path.join(out_dir, "**", "results.jsonl"), recursive=True)
            for line in open(path)]
    rows = list({r["seed"]: r for r in rows}.values())
    configs = sorted({o["config"] for r in rows for o in r["outcomes"]})
    status = collections.Counter(o["status"] for r in rows for o in r["outcomes"])
    fused = collections.Counter()
    for r in rows:
        for o in r["outcomes"]:
            fused.update(o.get("fused", {}))
    ops = collections.Counter(op for r in rows for op in r["ops"])
    seconds = sum(r["seconds"] for r in rows)
    cpus = collections.Counter(r.get("cpu", {}).get("summary", "not recorded") for r in rows)
    lines = [
        "CPU: " + "; ".join(f"{c} ({n} graphs)" for c, n in cpus.most_common()),
        f"graphs: {len(rows)}; configs: {len(configs)} ({', '.join(configs)})",
        f"compiles checked: {sum(status.values())}; ok {status['ok']}, crashes {status['crash']}, "
        f"mismatches {status['mismatch']}, torch bugs the float model shows too {status['upstream']}",
        f"time: {seconds / 60:.1f} min of compile + run ({seconds / max(1, sum(status.values())):.1f} s per compile)",
        "ops drawn: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()),
        "fusions fired (all configs): " + ", ".join(f"{k} {v}" for k, v in fused.most_common()),
    ]
    return "\n".join(lines)


def replay(path: str) -> int:
    record = json.load(open(path))
    harness.install_our_passes()
    config = harness.Config.parse(record["config"])
    if record.get("bundle_specs"):  # a corpus entry keeps its bundle's specs (a generator change cannot move it)
        specs = record["bundle_specs"]
        outcome = harness.check_many(specs, config)[specs.index(record["spec"])]
    elif record.get("bundle"):
        specs = [record["spec"] if s == record["spec"]["seed"] else graphs.generate(s) for s in record["bundle"]]
        outcome = harness.check_many(specs, config)[record["bundle"].index(record["spec"]["seed"])]
    else:
        outcome = harness.check(record["spec"], config)
    print(f"{graphs.describe(record['spec'])}\n[{record['config']}] {outcome.status} {outcome.stage} {outcome.error}")
    if outcome.trace:
        print(outcome.trace)
    return 0 if outcome.status == "ok" else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", type=int, default=500, help="graphs (per shard)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--shard", default="0/1", help="i/n: this process takes seeds with seed %% n == i")
    p.add_argument("--out", default="fuzz-out")
    p.add_argument("--bundle", type=int, default=1,
                   help="compile up to N graphs of one quantizer together (harness.check_many): fewer compiles")
    p.add_argument("--only", help="comma-separated ops or quant kinds: sweep only graphs that have one")
    p.add_argument("--full-matrix", action="store_true", help="all 16 switch configs instead of the 8 of the half fraction")
    p.add_argument("--no-minimize", dest="minimize", action="store_false")
    p.add_argument("--replay", help="re-run a saved repro (exit 1 while it still fails)")
    p.add_argument("--summary", help="print the summary of a results directory")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--float-check", nargs=2, metavar=("SEED", "CONFIG"), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.float_check:
        return float_check(int(args.float_check[0]), args.float_check[1])
    if args.summary:
        print(summarize(args.summary))
        return 0
    return sweep(args) if args.worker else supervise(args, argv)


if __name__ == "__main__":
    sys.exit(main())
