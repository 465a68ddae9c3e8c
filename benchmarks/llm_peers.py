"""Peers of the LLM recipes, timed by benchmarks/llm.py as recipes are: llama.cpp on the same GGUF,
and torchao's quantization of the same float model under plain torch.compile.

    pip install llama-cpp-python        # optional: builds llama.cpp from source (~5 min on 2 cores)
    python -P -m inductor_quant.benchmarks.llm --recipes bf16 woq_int8 woq_int4 llama.cpp:Q8_0 llama.cpp:Q4_0

A peer named `llama.cpp:<TYPE>` runs the model's GGUF through llama.cpp (llama-cpp-python):
`Q4_K_M` is the file the model's wheels ship; `Q8_0` and `Q4_0` are made from it once with
llama.cpp's own quantizer (`llama_model_quantize`, requantizing: no float original ships) and kept
beside our cached model. Same prompt token ids (our tokenizer is the GGUF's), same threads,
batch 1, prefill in one batch of the whole prompt, decode one token per call.

    pip install --no-deps torchao       # optional: torchao 0.18 installs beside torch 2.13
    python -P -m inductor_quant.benchmarks.llm --recipes woq_int8 woq_int4 dyn_int8 torchao:int8wo torchao:int4wo torchao:int8dq

A peer named `torchao:<CONFIG>` is our float decoder (the dequantized GGUF, as every recipe
starts from) in the recipe's float dtype (bf16 where native, else fp32), `torchao.quantize_`d
with `int8wo` (Int8WeightOnlyConfig: int8 per output channel), `int4wo` (the CPU int4 layout,
PrototypeInt4WeightOnlyConfig, groups of 32 as our `woq_int4`) or `int8dq`
(Int8DynamicActivationInt8WeightConfig: per-token int8 activations x per-channel int8 weights),
then compiled into the same two graphs through CompiledLM's chunking, with the same Inductor
options as our recipes (freezing + C++ wrapper) plus the ones torchao's `set_inductor_config`
would set process-wide (given per compile here instead). It compiles with torch's own Inductor:
our passes are taken out while it compiles (they would be installed already in the interleaved
run's process) and put back after.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from dataclasses import dataclass

import torch

from inductor_quant.llm import CompiledLM, Decoder, models
from inductor_quant.llm.generation import default_options

PREFIX = "llama.cpp:"
FTYPES = {"Q8_0": 7, "Q4_0": 2}  # llama_ftype values (llama.h)


TORCHAO = "torchao:"
TORCHAO_CONFIGS = ("int8wo", "int4wo", "int8dq")
# what torchao's `set_inductor_config=True` sets globally (torchao.quantization.utils
# .recommended_inductor_config_setter, 0.18), given to its compiles only
TORCHAO_INDUCTOR = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
                    "force_fuse_int_mm_with_mul": True}


def is_peer(name: str) -> bool:
    return name.startswith(PREFIX) or name.startswith(TORCHAO)


def build_peer(decoder, model: str, name: str, chunk: int, max_len: int, batch: int, all_logits: bool = False,
               options=None):
    """(the peer `name` — llama.cpp:<TYPE> or torchao:<CONFIG> — seconds to build it, seconds to
    compile it): ready to time (a torchao peer's two graphs compiled) or, with `all_logits`, to score."""
    start = time.perf_counter()
    if name.startswith(PREFIX):
        if batch != 1:
            raise ValueError("the llama.cpp peer runs batch 1")
        return LlamaCppLM(model, name[len(PREFIX):], max_len, torch.get_num_threads(), all_logits=all_logits), \
            time.perf_counter() - start, 0.0
    lm = TorchaoLM(decoder, name[len(TORCHAO):], chunk=chunk, max_len=max_len, batch=batch, all_logits=all_logits,
                   options=options)
    built = time.perf_counter() - start
    return lm, built, 0.0 if all_logits else lm.warm_up()  # scoring compiles the prompt graph only


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


# ---- torchao ------------------------------------------------------------------------------------


def _torchao_config(kind: str):
    if kind not in TORCHAO_CONFIGS:
        raise ValueError(f"torchao config {kind!r}: one of {', '.join(TORCHAO_CONFIGS)}")
    try:
        import torchao.quantization as tq
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    except ImportError as exc:
        raise RuntimeError("the torchao peer needs torchao. Fix: pip install --no-deps torchao "
                           "(0.18 runs beside torch 2.13)") from exc
    configs = {"int8wo": lambda: tq.Int8WeightOnlyConfig(set_inductor_config=False),
               "int4wo": lambda: PrototypeInt4WeightOnlyConfig(group_size=32, set_inductor_config=False),
               "int8dq": lambda: tq.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)}
    return configs[kind]()


@contextlib.contextmanager
def _without_our_passes():
    """torch's own Inductor for a block: our passes out if this process had them installed."""
    from inductor_quant import passes

    was = passes.is_installed()
    passes.uninstall()
    try:
        yield
    finally:
        if was:
            passes.install()


@dataclass
class TorchaoLM(CompiledLM):
    """CompiledLM's two graphs and calls (reset, prefill, step, score, warm_up) on our float decoder
    quantized by torchao (`recipe`: one of TORCHAO_CONFIGS) instead of exported and converted."""

    def __post_init__(self):
        from inductor_quant.kernels.cpu import cpu_info

        config = _torchao_config(self.recipe)  # first: says how to install torchao where it is missing
        from torchao.quantization import quantize_

        self.name = TORCHAO + self.recipe
        self.dtype = self.float_dtype or (torch.bfloat16 if cpu_info().bf16_native else torch.float32)
        self.options = {**(self.options or default_options()), **TORCHAO_INDUCTOR}
        model = Decoder(self.model.cfg, all_logits=self.all_logits)
        model.load_state_dict(self.model.state_dict())
        model = model.to(self.dtype).eval()
        quantize_(model, config)
        self.module = model
        self.compiled = torch.compile(model, backend=self._backend, dynamic=False)
        self.k_cache, self.v_cache = model.new_cache(self.batch, self.max_len, self.dtype)

    def _context(self):
        return contextlib.nullcontext()  # the model is in its float dtype itself

    def _call(self, fn, tokens, positions, index):
        if self.compiles < (1 if self.all_logits else 2):  # a graph may compile in this call
            with _without_our_passes():
                return super()._call(fn, tokens, positions, index)
        return super()._call(fn, tokens, positions, index)
