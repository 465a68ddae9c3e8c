"""LLM recipes on a real decoder: speed (prefill and decode) and accuracy against the float model.

    python -P -m inductor_quant.benchmarks.llm --recipes fp32 bf16 woq_int8 woq_int4 dyn_int8 dyn_int8_sq

Speed: each recipe in a process of its own, as a user runs it (loaded, quantized, both graphs
compiled, then timed): prefill of a `--prompt-tokens` prompt (median of 5, cache reset between)
and decode ms/token (median over 3 blocks of `--new-tokens` greedy steps). Interleaved: the same
recipes built side by side in one process, then one prefill and one block of decode steps each,
round-robin, 3 rounds (median); the table reports both.

Peers: a name `llama.cpp:<TYPE>` among the recipes (Q4_K_M as shipped, Q8_0, Q4_0) times
llama.cpp on the model's GGUF the same way, alone and interleaved; `torchao:<CONFIG>` (int8wo,
int4wo, int8dq) torchao's quantization of the same float model under torch.compile
(benchmarks/llm_peers.py).

Accuracy (`--accuracy N`): N passages of `--prompt-tokens` WordNet-gloss tokens (never the
calibration ones, inductor_quant/llm/text.py), teacher-forced through each compiled recipe and
through the eager fp32 model: perplexity, mean per-token KL(float || recipe), top-1 agreement.
The float model is the dequantized GGUF (inductor_quant/llm/models.py). A llama.cpp peer among the
recipes is scored the same way on the same token ids.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

from inductor_quant.llm import CompiledLM, command, models, recipe as recipe_named, text

from . import llm_peers


def _prompt(tokenizer, tokens: int, batch: int) -> torch.Tensor:
    ids = text.passages(tokenizer, tokens, 1, skip=text.CALIBRATION)[0]
    return torch.tensor([ids] * batch)


def build(model: str, name: str, chunk: int, max_len: int, batch: int):
    decoder, tokenizer = models.load(model)
    if llm_peers.is_peer(name):  # llama.cpp on the same GGUF, torchao on the same model (benchmarks/llm_peers.py)
        lm, build_s, compile_s = llm_peers.build_peer(decoder, model, name, chunk, max_len, batch)
        return lm, tokenizer, build_s, compile_s
    chosen = recipe_named(name)
    start = time.perf_counter()
    lm = CompiledLM(decoder, chosen, calibration=command.calibration(tokenizer, chunk, chosen), chunk=chunk,
                    max_len=max_len, batch=batch)
    quantize_s = time.perf_counter() - start
    compile_s = lm.warm_up()
    return lm, tokenizer, quantize_s, compile_s


def time_prefill(lm: CompiledLM, prompt: torch.Tensor) -> float:
    lm.reset()
    start = time.perf_counter()
    lm.prefill(prompt)
    return (time.perf_counter() - start) * 1e3


def time_decode(lm: CompiledLM, prompt: torch.Tensor, steps: int) -> float:
    """ms per decode step over `steps` greedy steps after the prompt."""
    lm.reset()
    logits = lm.prefill(prompt)
    start = time.perf_counter()
    for i in range(steps):
        logits = lm.step(logits.argmax(-1), prompt.shape[1] + i)
    return (time.perf_counter() - start) * 1e3 / steps


def alone(args, name: str) -> dict:
    """One recipe in this process: build, then time."""
    torch.set_num_threads(args.threads)
    lm, tokenizer, quantize_s, compile_s = build(args.model, name, args.prompt_tokens, args.max_len, args.batch)
    prompt = _prompt(tokenizer, args.prompt_tokens, args.batch)
    time_prefill(lm, prompt)  # warm-up
    prefill = statistics.median(time_prefill(lm, prompt) for _ in range(5))
    decode = statistics.median(time_decode(lm, prompt, args.new_tokens) for _ in range(3))
    return {"recipe": name, "float": str(lm.dtype).replace("torch.", ""), "prefill_ms": round(prefill, 1),
            "decode_ms": round(decode, 2), "quantize_s": round(quantize_s, 1), "compile_s": round(compile_s, 1),
            "recompiles": lm.compiles - 2}


def interleaved(args) -> dict:
    torch.set_num_threads(args.threads)
    built = {name: build(args.model, name, args.prompt_tokens, args.max_len, args.batch)[0] for name in args.recipes}
    _, tokenizer = models.load(args.model)
    prompt = _prompt(tokenizer, args.prompt_tokens, args.batch)
    prefill, decode = {n: [] for n in built}, {n: [] for n in built}
    for _ in range(3):
        for name, lm in built.items():
            prefill[name].append(time_prefill(lm, prompt))
            decode[name].append(time_decode(lm, prompt, args.new_tokens))
    return {n: {"prefill_ms": round(statistics.median(prefill[n]), 1), "decode_ms": round(statistics.median(decode[n]), 2)}
            for n in built}


def evaluation_passages(args, tokenizer) -> list:
    return [torch.tensor([p]) for p in text.passages(tokenizer, args.prompt_tokens, args.accuracy,
                                                     skip=text.CALIBRATION)]


def accuracy(args, name: str, reference: list) -> dict:
    """Teacher-forced perplexity, KL(float || recipe) and top-1 agreement on held-out passages
    (`reference`: the float model's log-probabilities for each, from `_float_logits`). The
    compile is the Python wrapper with freezing: the same kernels as the C++ one, sooner."""
    decoder, tokenizer = models.load(args.model)
    if llm_peers.is_peer(name):  # a peer on the same GGUF or float model, every position's logits kept
        lm = llm_peers.build_peer(decoder, args.model, name, args.prompt_tokens, args.prompt_tokens, 1, all_logits=True,
                                  options={"freezing": True})[0]
    else:
        chosen = recipe_named(name)
        lm = CompiledLM(decoder, chosen, calibration=command.calibration(tokenizer, args.prompt_tokens, chosen),
                        chunk=args.prompt_tokens, max_len=args.prompt_tokens, all_logits=True, options={"freezing": True})
    nll, kl, agree, count = 0.0, 0.0, 0, 0
    for ids, ref in zip(evaluation_passages(args, tokenizer), reference):
        logits = lm.score(ids)[0, :-1].float().log_softmax(-1)
        target = ids[0, 1:]
        nll += -logits.gather(-1, target[:, None]).sum().item()
        kl += (ref.exp() * (ref - logits)).sum().item()
        agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
        count += target.numel()
    return {"recipe": name, "ppl": round(math.exp(nll / count), 3), "kl": round(kl / count, 5),
            "top1": round(100 * agree / count, 2), "tokens": count}


def _float_logits(decoder, ids):
    """The eager fp32 model's log-probabilities for every next token of `ids` but the last's."""
    decoder.all_logits = True
    try:
        with torch.no_grad():
            k, v = decoder.new_cache(1, ids.shape[1])
            return decoder(ids, torch.arange(ids.shape[1]), k, v)[0, :-1].log_softmax(-1)
    finally:
        decoder.all_logits = False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--recipes", nargs="*", default=["bf16", "woq_int8", "woq_int4", "dyn_int8", "dyn_int8_sq"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--accuracy", type=int, default=0, help="passages for the accuracy table (0: speed only)")
    p.add_argument("--no-interleaved", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: time one recipe alone, print JSON
    p.add_argument("--out", help="JSON lines to write")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(alone(args, args.one)))
        return 0
    from inductor_quant.kernels.cpu import cpu_info

    machine = {"cpu": cpu_info().summary(), "threads": args.threads, "torch": torch.__version__, "batch": args.batch,
               "prompt_tokens": args.prompt_tokens, "model": args.model}
    rows = []
    if args.accuracy:
        decoder, tokenizer = models.load(args.model)
        torch.set_num_threads(args.threads)
        passages = evaluation_passages(args, tokenizer)
        reference = [_float_logits(decoder, ids) for ids in passages]
        nll = -sum(float(r.gather(-1, ids[0, 1:, None]).sum()) for r, ids in zip(reference, passages))
        machine["float_ppl"] = round(math.exp(nll / sum(ids.shape[1] - 1 for ids in passages)), 3)
        for name in args.recipes:
            rows.append({**machine, "kind": "accuracy", **accuracy(args, name, reference)})
            print(json.dumps(rows[-1]), flush=True)
    else:
        for name in args.recipes:
            cmd = [sys.executable, "-P", "-m", "inductor_quant.benchmarks.llm", "--one", name, "--model", args.model,
                   "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                   "--max-len", str(args.max_len), "--batch", str(args.batch), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            rows.append({**machine, "kind": "alone", **json.loads(line[0][7:])})
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_interleaved:
            for name, r in interleaved(args).items():
                rows.append({**machine, "kind": "interleaved", "recipe": name, **r})
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
