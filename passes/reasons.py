"""Why a rule did not fire: one stable code per reason, with the words people read.

A `check_*` returns None when its rule may fire, else a `Reason`: `Why.<CODE>(**detail)`.
Rules and rewrites branch on the code (`reason.why is Why.SATURATION`), never on the text;
`stats()["unfused"]` carries both (`Unfused.code` is the member's name in lower case).
"""

from __future__ import annotations

import dataclasses
import enum


class Why(enum.Enum):
    """Every reason a rule refuses. The value is the text template (`{name}` filled from detail)."""

    # the layer itself (prepack)
    ACT_NOT_PER_TENSOR = "activation dequantize is not per-tensor"
    DYNAMIC_CONV = "dynamic (tensor-qparam) activation: fused for linear only"
    DYNAMIC_QPARAMS_SHAPE = "dynamic activation qparams are not one-element tensors"
    ACT_DTYPE = "activation is not uint8/int8 (dtype {dtype} [{lo}, {hi}])"
    ACT_NOT_DEQUANTIZED = ("activation is not dequantized (float activation, int8 weight: weight-only int8) and our "
                           "kernel layer is not in this compile (AOTInductor, INDUCTOR_QUANT_OWN_KERNELS=0, or it "
                           "could not load: see its warning); torch has no op that keeps the weight int8 and beats the "
                           "float linear on the dequantized weight, which freezing folds and runs instead")
    WOQ_FORM = "weight-only int8 linear: {detail}"
    OTHER_RULE = "{detail}: another rule owns this match (its reason is the one kept)"
    PER_TOKEN_FORM = "per-token dynamic int8 linear: {detail}"
    WOQ_INT4_FORM = "weight-only int4 linear: {detail}"
    WOQ_INT4_GEOMETRY = ("weight-only int4 linear [{n}, {k}] in groups of {group}: torch's int4 CPU GEMM needs a "
                         "group of 32, 64, 128 or 256 dividing in_features and out_features a multiple of 16; the "
                         "float linear on the dequantized weight runs")
    WOQ_UNBUILDABLE = ("weight-only int8 linear: oneDNN on this CPU has no matmul that converts int8 weights for "
                       "{dtype} activations (bf16 needs AVX-512); the float linear on the dequantized weight runs")
    WEIGHT_DTYPE = "weight is not int8"
    WEIGHT_AXIS = "per-channel weight quantized on an axis other than 0"
    WEIGHT_ZERO_POINT = "per-tensor weight with non-zero zero point"
    COMPUTE_DTYPE = "conv/linear computes in a dtype other than fp32/bf16"
    TRANSPOSED_CONV = "transposed convolution"
    WEIGHT_PERMUTE = "weight permute is not a transpose"
    ADDMM_SCALED = "addmm with alpha/beta != 1"
    ONE_ROW_SUM_DIM = "one-row linear summed over an unexpected dim"
    ND_VIEW = "N-D linear whose output view does not restore the input's leading dims"
    BMM_NOT_LINEAR = "bmm is not a linear ({detail})"
    TEMPLATE_SHARED_WEIGHT = ("weight read by several linears (a Linear called twice): Inductor's C++ GEMM template "
                              "(max-autotune; fast_options() on AMX) fails to compile int8 GEMMs that share it")
    FP16_WEIGHT_FORM = "fp16-weight linear: {detail}"
    FP16_WEIGHT_AUTOCAST = ("fp16-weight linear under bf16 autocast: autocast makes it a bf16 linear (on the weight "
                            "rounded to fp16, then to bf16), which Inductor runs as such")
    NO_PATTERN = "no pattern matched this form ({detail})"
    # where the kernel would be wrong or crash on this CPU / torch (kernel_limits)
    SATURATION = ("8-bit activations and 8-bit weights on a CPU without VNNI ({isa}): oneDNN would add pairs "
                  "of int8 products in int16 and saturate, so the layer stays dequantize -> fp32 -> quantize "
                  "(exact, slower); quantize with the default config (reduce_range='auto': 7-bit weights on "
                  "this CPU) to fuse it")
    DYNAMIC_LAYOUT = "dynamic shapes with a 1-channel or 1-pixel input (Inductor would mispredict the output layout)"
    SUSPECT_SYMBOLIC = "suspect geometry with symbolic sizes (cannot probe the int8 kernel)"
    KERNEL_WRONG = "the int8 oneDNN kernel computes this geometry wrong (probed; torch 2.13)"
    WINDOW_IN_PADDING = "an output window lies entirely in the padding (the oneDNN conv crashes on such geometries)"
    # post-op folds
    NOT_FUSED_INPUT = "input is not a fused oneDNN op"
    NOOP_FORMAT = "copy changes the memory format"
    OTHER_USERS = "fused result has other users"
    ALREADY_REQUANTIZED = "output already requantized"
    POST_OP_UNSUPPORTED = "oneDNN {layer}{where} does not take post-op {name}"
    SLOT_TAKEN = "post-op slot taken"
    CONSTANT = "{name}: constant {key}={value} is not {want}"
    EXTRA_NOT_TENSOR = "extra input is not a tensor"
    EXTRA_INSIDE = "extra input is inside the match"
    EXTRA_SHAPE = "extra input differs in shape (broadcast add)"
    EXTRA_DTYPE = "extra input differs in dtype"
    NO_BINARY = "oneDNN {layer} does not take a binary post-op"
    ADD_UNBUILDABLE = "oneDNN on this CPU has no int8 matmul with {out} output, a {other} extra input and `add`"
    ACCUMULATOR_BUSY = ("the extra input is read after this op or is not a buffer of its own, and oneDNN's conv "
                        "can only add it in place")
    OUTPUT_QUANT_FORM = "output quantize is not per-tensor with scalar qparams"
    OUTPUT_RANGE = "output quant range is not within u8/s8"
    RESULT_DTYPE = "fused result is not fp32/bf16"
    CAST_FORM = "only a cast of an fp32 fused result to bf16 folds into it"
    OUTPUT_DTYPE = "output dtype {dtype} differs from the activation's (Inductor lowering limit)"
    REQUANT_EXTRA = "binary post-op with requantized output: no int8 kernel form adds this extra input ({detail})"
    # int8 propagation (pool, view, permute, cat)
    PROPAGATE_FORM = "int8 propagation needs scalar qparams"
    PROPAGATE_QPARAMS = "inputs and output quantized differently"
    AVG_POOL = "average pooling is not exact on int8 (rounding): computed in fp32 between dequantize and quantize"
    NO_INT8_FORM = "no int8 form of {op} matched (see passes/patterns.py)"
    # attention left to torch's flash attention (passes/attention.py; not a quantized op, so not in "unfused")
    ATTN_DROPOUT_OR_CAUSAL = "dropout or a causal mask"
    ATTN_LOGSUMEXP = "its logsumexp is read"
    ATTN_OPERANDS = "q, k, v are not 4-D fp32 or bf16 tensors of one dtype"
    ATTN_BF16_EMULATED = "bf16 is emulated on this CPU (oneDNN has no fast bf16 matmul here)"
    ATTN_UNBUILDABLE = "our attention does not build here"
    ATTN_MASK = "the mask is not an fp32 or bf16 additive mask"
    ATTN_SYMBOLIC_SCALE = "no scale and a symbolic head size"
    # the whole graph
    FREEZING_OFF = "freezing off (config.freezing / torch.no_grad())"
    UNKNOWN_GRAPH = "graph inputs named in a way this version of inductor_quant does not know (torch version)"

    def __call__(self, **detail) -> "Reason":
        return Reason(self, self.value.format(**detail) if detail else self.value)

    @property
    def code(self) -> str:
        return self.name.lower()


@dataclasses.dataclass(frozen=True)
class Reason:
    why: Why
    text: str

    def __str__(self) -> str:
        return self.text


# Reasons that are a choice, not a gap: such a layer is computed exactly in fp32 by design
# (`report --strict` does not fail on them).
BY_DESIGN = frozenset({Why.AVG_POOL, Why.FP16_WEIGHT_AUTOCAST})
