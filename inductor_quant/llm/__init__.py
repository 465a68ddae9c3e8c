"""LLM decoders through the same PT2E + torch.compile path: a decoder module with a static KV
cache (`Decoder`), the recipes by name (`RECIPES`), and a generation loop compiled once
(`CompiledLM`)."""

from .decoder import Decoder, DecoderConfig
from .generation import CompiledLM, Generated, sample
from .recipes import RECIPES, Recipe, recipe

__all__ = ["Decoder", "DecoderConfig", "CompiledLM", "Generated", "sample", "RECIPES", "Recipe", "recipe"]
