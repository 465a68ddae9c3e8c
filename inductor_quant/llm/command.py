"""`inductor-quant generate`: a real decoder, one recipe, a prompt -> the text, with prefill and
decode times (compile time apart: both graphs are compiled before the timed prompt)."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import torch

from ..kernels.cpu import cpu_info
from . import models, text
from .generation import CompiledLM

CALIBRATION_PASSAGES = 8  # x the chunk length, from WordNet glosses (SmoothQuant's maxima)
# GPTQ's second moments: on Gemma-3-270M 8 passages gave int4 perplexity 55.92, 32 gave 54.86
# (float 52.86; docs/PERFORMANCE.md, section 5b)
GPTQ_PASSAGES = 32


def calibration(tokenizer, chunk: int, recipe) -> list:
    """Token passages for the recipes that read activations (SmoothQuant, GPTQ); none for the rest."""
    count = max(CALIBRATION_PASSAGES if recipe.smooth is not None else 0, GPTQ_PASSAGES if recipe.gptq else 0)
    return [torch.tensor([p]) for p in text.passages(tokenizer, chunk, count)] if count else []


def run(model: str, recipe: str, prompt: str, max_new_tokens: int, temperature: float = 0.0,
        top_k: Optional[int] = None, seed: Optional[int] = None, chunk: int = 128, max_len: int = 512,
        options: Optional[dict] = None, progress: Callable[[str], None] = lambda msg: None, out=None) -> dict:
    """Generate and print (to `out`, default stdout); the numbers as a dict."""
    out = out if out is not None else sys.stdout
    start = time.perf_counter()
    progress(f"loading {model}")
    decoder, tokenizer = models.load(model, progress)
    loaded = time.perf_counter()
    from .recipes import recipe as recipe_named

    chosen = recipe_named(recipe)
    progress(f"{'quantizing' if chosen.quantized else 'exporting'} ({recipe})")
    lm = CompiledLM(decoder, chosen, calibration=calibration(tokenizer, chunk, chosen), chunk=chunk,
                    max_len=max_len, options=options)
    built = time.perf_counter()
    progress("compiling the prompt and decode graphs")
    compile_s = lm.warm_up()
    progress("")
    ids = torch.tensor([tokenizer(prompt).input_ids])
    if ids.shape[1] + max_new_tokens > max_len:
        raise SystemExit(f"the prompt ({ids.shape[1]} tokens) + {max_new_tokens} new tokens exceed --max-len {max_len}")
    print(prompt, end="", file=out, flush=True)
    pieces = []

    def show(token):  # stream each token's text as it comes
        pieces.append(int(token[0]))
        whole = tokenizer.decode(pieces, skip_special_tokens=True)
        shown = tokenizer.decode(pieces[:-1], skip_special_tokens=True)
        print(whole[len(shown):], end="", file=out, flush=True)

    result = lm.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                         stop_tokens=decoder.cfg.eos_token_ids, on_token=show)
    print(file=out)
    numbers = {
        "model": model, "recipe": recipe, "float": str(lm.dtype).replace("torch.", ""),
        "prompt_tokens": ids.shape[1], "new_tokens": result.tokens.shape[1],
        "prefill_ms": round(result.prefill_ms, 1), "decode_ms_per_token": round(result.decode_ms_per_token, 2),
        "load_s": round(loaded - start, 1), "quantize_s": round(built - loaded, 1), "compile_s": round(compile_s, 1),
        "recompiles_while_decoding": lm.compiles - 2, "cpu": cpu_info().summary(), "threads": torch.get_num_threads(),
    }
    print(f"\n{recipe} ({numbers['float']} float parts): prompt {numbers['prompt_tokens']} tokens in "
          f"{numbers['prefill_ms']} ms · {numbers['new_tokens']} new tokens at {numbers['decode_ms_per_token']} "
          f"ms/token · compile {numbers['compile_s']} s · {numbers['cpu']}, {numbers['threads']} threads",
          file=sys.stderr)
    return numbers
