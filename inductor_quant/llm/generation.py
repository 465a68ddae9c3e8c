"""Text generation that stays compiled: a decoder exported once, quantized by a recipe, and
compiled into exactly two graphs — prompt chunks of `chunk` tokens and single decode steps —
that every later call reuses (no recompile per step or per prompt length).

How: every shape is fixed. A prompt is cut into chunks of `chunk` tokens (the last one padded;
the padding writes cache slots that the decode steps overwrite before anything reads them), the
KV cache has `max_len` slots, and positions and the token whose logits are wanted are tensors, so
nothing the graphs guard on changes between calls.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch

from ..compile_options import inductor_settings
from .decoder import Decoder
from .recipes import Recipe, recipe as recipe_named


def default_options() -> dict:
    """Freezing (our passes fuse and prepack there) and the C++ wrapper: a decode step calls a
    few hundred small kernels, and Python between them would cost more than they do."""
    return {"freezing": True, "cpp_wrapper": True}


@dataclass
class Generated:
    tokens: torch.Tensor              # [batch, new tokens]
    prefill_ms: float
    decode_ms_per_token: float
    steps: int


@dataclass
class CompiledLM:
    """`model` under `recipe`, ready to generate `batch` sequences of up to `max_len` tokens.

    `calibration`: token-id tensors [rows, n] the quantized recipes calibrate on (their
    activations; weight-only recipes need none), any number of rows: fed `batch` at a time.
    `options`: Inductor options (default: `default_options()`; `fast_options()`'s guard filter is
    what this object sets anyway)."""

    model: Decoder
    recipe: Recipe
    calibration: Iterable[torch.Tensor] = ()
    chunk: int = 128
    max_len: int = 512
    batch: int = 1
    options: Optional[dict] = None
    float_dtype: Optional[torch.dtype] = None  # default: the recipe's choice for this CPU
    all_logits: bool = False  # the prompt graph returns every token's logits (`score`), not the last
    compiles: int = field(default=0, init=False)  # graphs Inductor compiled for this model

    def __post_init__(self):
        if isinstance(self.recipe, str):
            self.recipe = recipe_named(self.recipe)
        if self.max_len < self.chunk:
            raise ValueError(f"max_len={self.max_len} is shorter than one prompt chunk ({self.chunk} tokens)")
        self.dtype = self.float_dtype or self.recipe.float_dtype()
        self.module = self._build()
        # Dynamo's guards on our private module's attributes (its parameters, read every call)
        # cost ~0.6 ms a decode step; nothing outside this object can reach the module to change them
        self.compiled = torch.compile(self.module, backend=self._backend, dynamic=False,
                                      options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        self.k_cache, self.v_cache = self.model.new_cache(self.batch, self.max_len, self.dtype)

    # -- building -------------------------------------------------------------------------------

    def _example(self, tokens: int, batch: int):
        # the cache in the dtype it will have: export bakes the dtype of every conversion into it
        k, v = self.model.new_cache(batch, self.max_len, self.dtype)
        return (torch.zeros(batch, tokens, dtype=torch.long), torch.arange(tokens), k, v,
                torch.zeros(1, dtype=torch.long))

    def _calibration_batches(self) -> List[torch.Tensor]:
        """The calibration texts as [batch, n] id tensors: the exported graph takes exactly `batch`
        rows (any other count fails its guard). Consecutive rows of one length are stacked `batch`
        at a time, in order; a group cut short (by the end or a new length) repeats its own rows,
        which leaves every statistic the recipes calibrate (ranges, SmoothQuant's channel maxima,
        GPTQ's second moments up to a weight per text) as those texts give it."""
        groups, pending = [], []
        for ids in self.calibration:
            for row in ids.reshape(-1, ids.shape[-1]):
                if pending and row.shape != pending[0].shape:
                    groups.append(pending)
                    pending = []
                pending.append(row)
                if len(pending) == self.batch:
                    groups.append(pending)
                    pending = []
        if pending:
            groups.append(pending)
        return [torch.stack([g[i % len(g)] for i in range(self.batch)]) for g in groups]

    def _calibration_calls(self) -> List[tuple]:
        """Each calibration batch as the prompt-chunk calls that would process it (one cache per
        batch, so later chunks attend to earlier ones as in use)."""
        calls = []
        for ids in self._calibration_batches():
            k, v = self.model.new_cache(ids.shape[0], self.max_len, self.dtype)
            for start in range(0, min(ids.shape[1], self.max_len - self.chunk + 1), self.chunk):
                part = ids[:, start:start + self.chunk]
                n = part.shape[1]
                if n < self.chunk:
                    part = torch.nn.functional.pad(part, (0, self.chunk - n))
                calls.append((part, torch.arange(start, start + self.chunk), k, v, torch.tensor([n - 1])))
        return calls

    def _build(self) -> torch.nn.Module:
        was, self.model.all_logits = self.model.all_logits, self.all_logits  # read by export
        try:
            return self._export()
        finally:
            self.model.all_logits = was

    def _export(self) -> torch.nn.Module:
        tokens = torch.export.Dim("tokens", min=1, max=self.chunk)
        dynamic = ({1: tokens}, {0: tokens}, None, None, None)
        if self.recipe.bf16_weights:
            model = Decoder(self.model.cfg, all_logits=self.all_logits)
            model.load_state_dict(self.model.state_dict())
            model = model.to(torch.bfloat16).eval()
            return torch.export.export(model, self._example(self.chunk, self.batch), dynamic_shapes=dynamic).module()
        ex = self._example(self.chunk, self.batch)
        if not self.recipe.quantized:
            return torch.export.export(self.model, ex, dynamic_shapes=dynamic).module()
        from ..api import quantize

        calls = self._calibration_calls()
        gptq = self.recipe.gptq
        if not calls:  # weight-only and dynamic recipes observe only weights; SmoothQuant needs text
            if self.recipe.smooth is not None:
                raise ValueError(f"recipe {self.recipe.name!r} calibrates SmoothQuant: give calibration text")
            if gptq:
                warnings.warn(f"recipe {self.recipe.name!r} fits its 4-bit weights with GPTQ on calibration text, and "
                              f"none was given: they are rounded to nearest instead (a larger error). Fix: pass "
                              f"calibration=[token id tensors] (`inductor-quant generate` reads WordNet glosses)")
                gptq = False
            calls = [ex]
        return quantize(self.model, ex, calls, quantizer=self.recipe.quantizer(self.model), dynamic_shapes=dynamic,
                        smooth=self.recipe.smooth, gptq=gptq)

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        return compile_fx(gm, example_inputs)  # under the options _call patched in

    def _context(self):
        quantized_mixed = self.recipe.quantized and self.dtype == torch.bfloat16
        return torch.autocast("cpu", torch.bfloat16) if quantized_mixed else contextlib.nullcontext()

    def _call(self, fn, tokens, positions, index):
        # the options as global config while Dynamo traces, not only as compile_fx's patches:
        # Dynamo reads `freezing` itself to make the weights constants (as options only, the
        # weights stay graph inputs and nothing is frozen)
        with torch.no_grad(), self._context(), \
                torch._inductor.config.patch(inductor_settings(self.options or default_options())):
            return fn(tokens, positions, self.k_cache, self.v_cache, index)

    # -- running ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sequences (the cache is overwritten by the next prompt anyway; zeroed for
        clarity)."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    def prefill(self, ids: torch.Tensor, fn: Optional[Callable] = None) -> torch.Tensor:
        """Run the prompt `ids` [batch, n] from position 0; logits of its last token [batch, V]."""
        fn = self.compiled if fn is None else fn
        ids = self._check(ids)
        n = ids.shape[1]
        if -(-n // self.chunk) * self.chunk > self.max_len:
            raise ValueError(f"a {n}-token prompt needs {-(-n // self.chunk) * self.chunk} cache slots; max_len={self.max_len}")
        logits = None
        for part, start, m in self._chunks(ids):
            logits = self._call(fn, part, torch.arange(start, start + self.chunk), torch.tensor([m - 1]))
        return logits[:, -1].float()

    def _chunks(self, ids: torch.Tensor):
        """(chunk of `ids` padded to `chunk` tokens, its first position, its real tokens)."""
        for start in range(0, ids.shape[1], self.chunk):
            # a fresh [batch, chunk] tensor: a slice keeps the prompt's strides, which the
            # compiled graph guards on
            part = ids.new_zeros(self.batch, self.chunk)
            m = min(self.chunk, ids.shape[1] - start)
            part[:, :m] = ids[:, start:start + m]
            yield part, start, m

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """Every token's logits [batch, n, V] for the texts `ids` [batch, n] (teacher forcing;
        built with `all_logits=True`)."""
        if not self.all_logits:
            raise ValueError("score() needs a CompiledLM built with all_logits=True")
        ids = self._check(ids)
        out = [self._call(self.compiled, part, torch.arange(start, start + self.chunk), torch.zeros(1, dtype=torch.long))[:, :m]
               for part, start, m in self._chunks(ids)]
        return torch.cat(out, 1).float()

    def step(self, tokens: torch.Tensor, position: int, fn: Optional[Callable] = None) -> torch.Tensor:
        """Feed one token per sequence ([batch]) at `position`; logits of it [batch, V]."""
        if position >= self.max_len:
            raise ValueError(f"position {position} is past the cache (max_len={self.max_len})")
        logits = self._call(self.compiled if fn is None else fn, tokens.reshape(self.batch, 1), torch.tensor([position]),
                            torch.zeros(1, dtype=torch.long))
        return logits[:, -1].float()

    def warm_up(self) -> float:
        """Compile both graphs now (on scratch tokens); seconds taken."""
        start = time.perf_counter()
        self.prefill(torch.zeros(self.batch, 1, dtype=torch.long))
        self.step(torch.zeros(self.batch, dtype=torch.long), self.chunk)
        self.reset()
        return time.perf_counter() - start

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
                 seed: Optional[int] = None, stop_tokens: Iterable[int] = (),
                 on_token: Optional[Callable[[torch.Tensor], None]] = None) -> Generated:
        """Greedy (temperature 0) or sampled continuation of the prompts `ids` [batch, n]."""
        ids = self._check(ids)
        n = ids.shape[1]
        if n + max_new_tokens > self.max_len:
            raise ValueError(f"{n} prompt + {max_new_tokens} new tokens exceed max_len={self.max_len}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long)
        start = time.perf_counter()
        logits = self.prefill(ids)
        prefill_ms = (time.perf_counter() - start) * 1e3
        out, done = [], torch.zeros(self.batch, dtype=torch.bool)
        start = time.perf_counter()
        for i in range(max_new_tokens):
            token = sample(logits, temperature, top_k, generator)
            out.append(token)
            if on_token is not None:
                on_token(token)
            done |= torch.isin(token, stop)
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            logits = self.step(token, n + i)
        steps = max(len(out) - 1, 1)
        decode_ms = (time.perf_counter() - start) * 1e3 / steps
        return Generated(torch.stack(out, 1), prefill_ms, decode_ms, len(out) - 1)

    def _check(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.reshape(1, -1) if ids.dim() == 1 else ids
        if ids.shape[0] != self.batch:
            raise ValueError(f"{ids.shape[0]} prompts for a CompiledLM built for batch={self.batch}")
        return ids.long()


def sample(logits: torch.Tensor, temperature: float, top_k: Optional[int], generator=None) -> torch.Tensor:
    """The next token per row of `logits` [batch, V]: argmax at temperature 0, else drawn from
    softmax(logits / temperature) over the `top_k` most likely (all if None)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
