"""The LLM recipes by name: what each quantizes, and in which float type the rest runs.

| recipe | linears | LM head | float parts |
|---|---|---|---|
| `fp32` | float | float | fp32 |
| `bf16` | float, bf16 weights | bf16 | bf16 (where bf16 is native) |
| `woq_int8` | int8 weights, an fp16 scale per group of 32 inputs (per channel where the inputs are not whole groups) | int8, the same | bf16 where native, else fp32 |
| `woq_int4` | 4-bit weights in groups of 32 (a scale and a float zero point each, by least squares), rounded by GPTQ on calibration text; the V projections int8 as in `woq_int8` (int8 too where torch's int4 GEMM does not take the shape) | int8 as in `woq_int8` (it is the tied embedding) | same |
| `woq_int4_all` | all 4-bit (the V projections too), GPTQ | int4 too: the fastest decode, the largest error | same |
| `dyn_int8` | per-token dynamic int8 x int8 | same | same |
| `dyn_int8_sq` | `dyn_int8` after SmoothQuant (alpha 0.7: measured best on Gemma-3-270M, docs/PERFORMANCE.md 5b) | same | same |

The LM head of a Gemma is the token embedding (262k x 640 on Gemma-3-270M, most of the weights
a decode step reads), so every quantized recipe quantizes it; `woq_int4` keeps it int8,
`woq_int4_all` makes it int4 as well (docs/PERFORMANCE.md, section 5b, has both accuracies). The
V projections are the most sensitive linears to 4 bits and 3 % of a layer's weights (GGUF's
Q4_K_M keeps them wider too): int8 in `woq_int4`. GPTQ (inductor_quant/gptq.py) fits the
4-bit weights on `command.GPTQ_PASSAGES` WordNet passages: without calibration text they are
rounded to nearest, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..kernels import int4pack
from ..kernels.cpu import cpu_info


def _quantizer(global_config: Callable, overrides: Tuple[Tuple[str, Callable], ...] = (), group: Optional[int] = None,
               fallback_config: Optional[Callable] = None):
    """(model) -> the recipe's quantizer: `global_config` everywhere, and for each (name, config) of
    `overrides` that config on the linears called `name` (the LM head `lm_head`, each layer's
    `v_proj`). With `group` (group-wise weights), a linear whose shape torch's int4 GEMM does not
    take (in_features not whole groups, out_features not a multiple of 16: kernels/int4pack.py)
    takes `fallback_config`: int8 rather than an error or a float layer."""
    def build(model: torch.nn.Module):
        from ..quantizer.x86_inductor_quantizer import X86InductorQuantizer

        q = X86InductorQuantizer().set_global(global_config(None))
        chosen = dict(overrides)
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            config = chosen.get(name.rsplit(".", 1)[-1])
            if config is None and group is not None and not int4pack.supports(mod.out_features, mod.in_features, group):
                config = fallback_config
            q.set_module_name_qconfig(name, (config or global_config)(mod))
        return q

    return build


# Each recipe's config for one linear (`mod`; None: the quantizer's global config).


def _woq_int8(mod: Optional[torch.nn.Linear]):
    """int8 in groups of INT8_GROUP where the linear's inputs are whole groups, else per channel."""
    from ..quantizer.configs import get_x86_inductor_linear_weight_only_int8_config

    whole = mod is not None and mod.in_features % INT8_GROUP == 0
    return get_x86_inductor_linear_weight_only_int8_config(group_size=INT8_GROUP if whole else None)


def _woq_int4(mod: Optional[torch.nn.Linear]):
    from ..quantizer.configs import get_x86_inductor_linear_weight_only_int4_config

    return get_x86_inductor_linear_weight_only_int4_config(group_size=INT4_GROUP, zero_point_domain="float")


def _dyn_int8(mod: Optional[torch.nn.Linear]):
    from ..quantizer.configs import get_x86_inductor_linear_dynamic_per_token_config

    return get_x86_inductor_linear_dynamic_per_token_config()


# Gemma-3-270M, teacher-forced perplexity on 8 WordNet passages (float 52.9): symmetric groups of
# 32 gave 81, asymmetric (an integer zero point per group, min/max) 70, of 64 81, of 128 100; the
# least-squares fit with float zero points (groups of 32) is the choice. docs/PERFORMANCE.md, section 5b.
INT4_GROUP = 32
# Gemma-3-270M, the same passages, int8 weights everywhere (eager): KL to the float model per channel
# 0.0038, in groups of 128 0.0020, of 64 0.0015, of 32 0.0009. Compiled (bf16 activations): groups
# of 64 0.0021, of 32 0.0015 (the 0.002 target met), for a decode step ~13 % slower than per
# channel with fp32 scales (1/8 of the weight's bytes; stored as fp16 since: 1/16, 0.00146). Section 5b.
INT8_GROUP = 32


@dataclass(frozen=True)
class Recipe:
    name: str
    quantizer: Optional[Callable] = None  # (model) -> Quantizer; None: the float model
    smooth: Optional[float] = None        # SmoothQuant alpha
    gptq: bool = False                    # 4-bit weights fitted with GPTQ on the calibration text
    bf16_weights: bool = False            # the float baseline in bf16

    @property
    def quantized(self) -> bool:
        return self.quantizer is not None

    def float_dtype(self) -> torch.dtype:
        """What the float parts compute in: bf16 where this CPU has it natively (or asked for by
        the bf16 baseline), else fp32 (emulated bf16 is several times slower than fp32)."""
        if self.name == "fp32":
            return torch.float32
        return torch.bfloat16 if (self.bf16_weights or cpu_info().bf16_native) else torch.float32


RECIPES = {r.name: r for r in (
    Recipe("fp32"),
    Recipe("bf16", bf16_weights=True),
    Recipe("woq_int8", _quantizer(_woq_int8)),
    Recipe("woq_int4", _quantizer(_woq_int4, overrides=(("lm_head", _woq_int8), ("v_proj", _woq_int8)), group=INT4_GROUP,
                                  fallback_config=_woq_int8), gptq=True),
    Recipe("woq_int4_all", _quantizer(_woq_int4, group=INT4_GROUP, fallback_config=_woq_int8), gptq=True),
    Recipe("dyn_int8", _quantizer(_dyn_int8)),
    Recipe("dyn_int8_sq", _quantizer(_dyn_int8), smooth=0.7),
)}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; one of {', '.join(RECIPES)}")
    return RECIPES[name]
