"""Which of torch's built-in quantization fusions ours replace, and how they are taken out and put back.

torch (fx_passes/quantization.py) registers its int8 fusions lazily, on the first compile,
into process-global pattern passes: weight prepack and post-op folds into the freezing passes,
lowerings of the fused int8 ops and of int8 pooling/cat/reshape into the post-grad passes. Those
families do what our passes do, and would run after ours on what we leave unfused -- including
forms we refuse for correctness (weights quantized per channel on axis 1, which they fuse with
wrong numbers), and the fp16-weight linear (ours: passes/prepack.py). The same file registers
fusions that have nothing to do with Q/DQ conv/linear (weight-only int8, SmoothQuant's
`_int_mm`): those stay, for every model in the process.

Stateless: the installation object (install.py) keeps what was removed and puts it back.
"""

from __future__ import annotations

import dataclasses

from inductor_quant.kernels import compat

QUANT_MODULE = "torch._inductor.fx_passes.quantization"
# the registering functions (handler qualname `<register fn>.<locals>.<handler>`) of the
# families our passes replace
REPLACED = frozenset({
    "_register_dequant_promotion_pass",
    "_register_qconv_weight_prepack_pass", "_register_qlinear_weight_prepack_pass",
    "_register_qconv_post_op_fusion_pass", "_register_qlinear_post_op_fusion_pass",
    "_register_quantized_conv_lowering", "_register_quantized_conv_binary_lowering",
    "_register_quantized_linear_unary_lowering", "_register_quantized_linear_binary_lowering",
    "_register_quantized_maxpool2d_lowering", "_register_quantized_cat_lowering",
    "_register_quantized_reshape_lowering", "_register_linear_dynamic_fp16_weight_prepack_pass",
})


@dataclasses.dataclass(frozen=True)
class Removed:
    """One entry taken out of a pattern pass: where it was, so it goes back there."""

    pattern_pass: object
    key: object
    index: int
    entry: object


def family(entry) -> str:
    """The registering function of a built-in quantization entry ('' for anything else)."""
    handler = compat.entry_handler(entry)
    if getattr(handler, "__module__", None) != QUANT_MODULE:
        return ""
    return getattr(handler, "__qualname__", "").split(".<locals>")[0]


def is_replaced(entry) -> bool:
    return family(entry) in REPLACED


def remove() -> list:
    """Take every replaced entry out of torch's global passes; returns what was removed."""
    removed = []
    for p in compat.builtin_passes():
        for key, entries in list(p.patterns.items()):
            kept = [e for e in entries if not is_replaced(e)]
            if len(kept) != len(entries):
                removed += [Removed(p, key, i, e) for i, e in enumerate(entries) if is_replaced(e)]
                p.patterns[key] = kept
    return removed


def reinsert(removed: list) -> None:
    """Put removed entries back at their positions, keeping whatever was registered meanwhile."""
    for r in sorted(removed, key=lambda r: r.index):
        entries = r.pattern_pass.patterns.setdefault(r.key, [])
        if r.entry not in entries:
            entries.insert(min(r.index, len(entries)), r.entry)
