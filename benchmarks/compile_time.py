"""How long our passes take inside one compile, on a BERT-large-shaped encoder (hidden 1024,
16 heads, MLP 4096) of a given depth: the CPU time of `registry.run` on the freezing graph, the
graph's size, and the whole compile's wall time for scale.

    python -m inductor_quant.benchmarks.compile_time --layers 24 48

Our passes should grow linearly with the graph (twice the layers, twice the time); they are a
small part of the compile either way (docs/PERFORMANCE.md, compile time).
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

SEQ, VOCAB = 128, 1000


def measure(layers: int) -> dict:
    import inductor_quant
    from inductor_quant.benchmarks.zoo import BertEncoder

    install = importlib.import_module("inductor_quant.passes.install")  # the module, not the function
    torch.manual_seed(0)
    model = BertEncoder(layers=layers, hidden=1024, heads=16, mlp=4096, vocab=VOCAB, max_len=SEQ).eval()
    ids = torch.randint(0, VOCAB, (1, SEQ))
    converted = inductor_quant.quantize(model, (ids,), [(ids,)])
    runs, run = [], install.registry.run

    def timed(graph):
        start = time.process_time()
        run(graph)
        runs.append((time.process_time() - start, len(graph.nodes)))

    install.registry.run = timed
    try:
        torch._dynamo.reset()
        with torch.no_grad(), torch._inductor.config.patch(freezing=True, fx_graph_cache=False):
            start = time.perf_counter()
            torch.compile(converted)(ids)
            compile_s = time.perf_counter() - start
    finally:
        install.registry.run = run
    (passes_s, nodes), = runs
    return {"layers": layers, "nodes": nodes, "passes_s": round(passes_s, 3), "compile_s": round(compile_s, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[24])
    args = p.parse_args(argv)
    from inductor_quant.kernels.cpu import cpu_info

    print(f"CPU: {cpu_info().summary()}")
    for layers in args.layers:
        r = measure(layers)
        print(f"{r['layers']} layers, {r['nodes']} nodes after our passes: passes {r['passes_s']:.2f} s CPU "
              f"of a {r['compile_s']:.1f} s compile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
