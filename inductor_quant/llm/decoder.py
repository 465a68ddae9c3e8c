"""A decoder-only language model (the Gemma 3 text architecture) written for export and a static
KV cache: every shape is fixed by the call, so one compiled graph serves every decode step.

Why our own module rather than the transformers one: `torch.export` of a transformers decoder
goes through its cache classes, whose Python ints become guards (a recompile per step) and whose
layout changes between releases. Here the whole state is three tensors the caller owns:
`k_cache` and `v_cache` ([layers, batch, kv_heads, max_len, head_dim], written in place at
`positions`) and nothing else. Weights load from a transformers `Gemma3ForCausalLM`
(`from_transformers`), and the forward pass computes what that model computes (tested to float
rounding, tests/llm/test_decoder.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class DecoderConfig:
    """The architecture's numbers (names as in transformers' `Gemma3TextConfig`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int = 512
    rope_theta_full: float = 1_000_000.0
    rope_theta_sliding: float = 10_000.0
    layer_types: List[str] = field(default_factory=list)
    bos_token_id: int = 2
    eos_token_ids: tuple = (1,)

    def __post_init__(self):
        if not self.layer_types:  # Gemma 3: five sliding-window layers, then one global, repeated
            kinds = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(self.num_hidden_layers)]
            object.__setattr__(self, "layer_types", kinds)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")

    @classmethod
    def tiny(cls, **overrides) -> "DecoderConfig":
        """A random-weight model of the same shape family for tests (Gemma 3's 4:1 GQA, two
        layer kinds), small enough to compile in seconds."""
        base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                    sliding_window=8, layer_types=[SLIDING, FULL])
        base.update(overrides)
        return cls(**base)


class RMSNorm(nn.Module):
    """Gemma's RMS norm: computed in fp32, scaled by (1 + weight)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.index = index
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, positions, k_cache, v_cache):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2))
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # this step's keys and values into the caller's cache, then attend over the whole cache
        # (slots not yet written are masked out). One `index_put_` on the whole cache, indexed by
        # (layer, position): Inductor writes it in place. Written as `k_cache[layer].index_copy_`
        # (a view of one layer), functionalization made it a copy of every layer's cache, ~250 us
        # a layer per decode step (docs/PERFORMANCE.md, section 5b).
        layer = torch.full_like(positions, self.index)
        torch.ops.aten.index_put_(k_cache, [layer, None, None, positions], k.to(k_cache.dtype).permute(2, 0, 1, 3))
        torch.ops.aten.index_put_(v_cache, [layer, None, None, positions], v.to(v_cache.dtype).permute(2, 0, 1, 3))
        keys = k_cache[self.index].to(q.dtype)
        values = v_cache[self.index].to(q.dtype)
        # grouped-query attention without repeating the cache per query head (a copy of the whole
        # layer cache every step): query head h reads KV head h // g, so the g query heads of a KV
        # head attend as g * t rows of one head, the mask repeated for each
        g = self.heads // self.kv_heads
        q = q.reshape(b, self.kv_heads, g * t, self.head_dim)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.dtype).repeat(g, 1), scale=self.scale)
        # the rows back to [b, t, heads * head_dim] by splitting them (a view for any token count):
        # a reshape of the whole [b, kv_heads, g * t, head_dim] output to [b, heads, t, head_dim]
        # made export guard on the symbolic token count and refuse kv_heads > 1 (decoder fuzz seed 106)
        out = out.unflatten(2, (g, t)).permute(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.kind = cfg.layer_types[index]
        self.self_attn = Attention(cfg, index)
        self.mlp = MLP(cfg)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)

    def forward(self, x, cos, sin, mask, positions, k_cache, v_cache):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, positions, k_cache, v_cache)
        x = x + self.post_attention_layernorm(h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(h)


class Decoder(nn.Module):
    """forward(tokens [B, T], positions [T], k_cache, v_cache, logit_index [1]) -> logits [B, 1, V]
    of the token at `logit_index` (the last real one of a padded prompt chunk; 0 when decoding).
    With `all_logits=True` it returns [B, T, V] instead (scoring a text)."""

    def __init__(self, cfg: DecoderConfig, all_logits: bool = False):
        super().__init__()
        self.cfg = cfg
        self.all_logits = all_logits
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as in Gemma
        for kind, theta in ((FULL, cfg.rope_theta_full), (SLIDING, cfg.rope_theta_sliding)):
            inv = 1.0 / theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
            self.register_buffer(f"inv_freq_{kind}", inv, persistent=False)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype = torch.float32):
        """Zeroed K and V caches for `batch` sequences of up to `max_len` tokens."""
        c = self.cfg
        shape = (c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim)
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)

    def _rope(self, kind: str, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[:, None].float() * getattr(self, f"inv_freq_{kind}")
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _mask(self, kind: str, positions: torch.Tensor, max_len: int) -> torch.Tensor:
        slots = torch.arange(max_len, device=positions.device)
        allowed = slots[None, :] <= positions[:, None]
        if kind == SLIDING:
            allowed = allowed & (positions[:, None] - slots[None, :] < self.cfg.sliding_window)
        return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))

    def forward(self, tokens, positions, k_cache, v_cache, logit_index: Optional[torch.Tensor] = None):
        x = self.embed_tokens(tokens)
        x = x * torch.tensor(math.sqrt(self.cfg.hidden_size), dtype=x.dtype)
        max_len = k_cache.shape[3]
        rope = {kind: self._rope(kind, positions, x.dtype) for kind in (FULL, SLIDING)}
        masks = {kind: self._mask(kind, positions, max_len) for kind in (FULL, SLIDING)}
        for layer in self.layers:
            cos, sin = rope[layer.kind]
            x = layer(x, cos, sin, masks[layer.kind], positions, k_cache, v_cache)
        x = self.norm(x)  # before picking the row: the LM head's input keeps every token's row in the graph
        if not self.all_logits:  # (GPTQ's calibration of an int4 head reads them)
            x = x.index_select(1, logit_index if logit_index is not None else positions.new_zeros(1))
        return self.lm_head(x)

    @classmethod
    def from_transformers(cls, hf_model, all_logits: bool = False) -> "Decoder":
        """Our module with the weights of a transformers `Gemma3ForCausalLM` (fp32 copies)."""
        c = hf_model.config
        rope = getattr(c, "rope_parameters", None) or {}

        def theta(kind, default):
            return float((rope.get(kind) or {}).get("rope_theta", default))

        cfg = DecoderConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
            query_pre_attn_scalar=c.query_pre_attn_scalar, sliding_window=c.sliding_window or 1 << 30,
            rope_theta_full=theta(FULL, 1_000_000.0), rope_theta_sliding=theta(SLIDING, 10_000.0),
            layer_types=list(c.layer_types), bos_token_id=c.bos_token_id if c.bos_token_id is not None else 2,
            eos_token_ids=tuple(c.eos_token_id if isinstance(c.eos_token_id, (list, tuple)) else [c.eos_token_id]),
        )
        unsupported = [name for name in ("final_logit_softcapping", "attn_logit_softcapping")
                       if getattr(c, name, None) is not None]
        if unsupported or getattr(c, "use_bidirectional_attention", False):
            raise ValueError(f"this Gemma 3 variant uses {unsupported or 'bidirectional attention'}, "
                             "which inductor_quant.llm.Decoder does not implement")
        model = cls(cfg, all_logits=all_logits)
        state = {k.removeprefix("model."): v.float() for k, v in hf_model.state_dict().items()}
        state["lm_head.weight"] = state.get("lm_head.weight", state["embed_tokens.weight"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.endswith(("inv_freq", "embed_scale"))]
        if missing or unexpected:
            raise ValueError(f"weights do not match the Gemma 3 layout: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return model.eval()
