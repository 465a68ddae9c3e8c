"""Annotators, registered by name and run from one ordered list per quantizer.

An annotator is `fn(ctx: AnnotationContext) -> None`: it walks `ctx.model`'s graph, matches
ATen ops (see aten_ops.py), asks `ctx.config_for(anchor)` which config applies (precedence:
qconfig_resolver.py) and writes `QuantizationAnnotation`s. Every annotator skips nodes that
already carry an annotation, so the order of the list *is* the priority: fusion patterns
before single ops, larger chains first, int8 propagation last (it needs its producers done).

Recipe of a fused chain `anchor [-> bn] [-> unary | -> add [-> relu]]`:
    anchor (conv/linear):  input edge  x -> input_activation, weight edge w -> weight,
                           bias edge   b -> config.bias (None: stays fp32)
    add (binary post-op):  conv: the *other* operand's edge -> input_activation (residual
                           enters as dq(int8)); linear: the other operand stays fp32 (BERT-
                           style residual streams lose accuracy in 8 bits, as upstream found)
    last node of chain:    output_qspec = output_activation
    every node of chain:   _annotated = True (middle nodes carry no specs; eval-mode dropout
                           between chain ops is walked over as a middle node)
So a chain costs at most one q/dq pair on its output, whether or not oneDNN can take the
post-op as an attribute (if it cannot, Inductor fuses it into generated C++).
The X86 list ends with "prune_float_outputs": a chain output no consumer takes quantized
(LayerNorm, softmax, the model output, ...) drops its output spec, so the conv/linear emits
fp32 there instead of a q/dq round trip.
A dynamic config annotates only `linear` (and opt-in matmul) anchors: input edge (dynamic)
and weight edge; no output spec, no post-op chain.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional

from torch.fx import GraphModule, Node

from .aten_ops import (
    ADD_OPS, BATCH_NORM_OPS, CAT_OPS, DROPOUT_OPS, LINEAR_OPS, MATMUL_OPS, MUL_OPS, POOL_OPS, RELU_OPS,
    SHAPE_OPS, UNARY_OPS, conv_kind, is_constant, is_float_tensor, is_op, onednn_fuses, only_user, same_shape,
)
from .configs import is_dynamic_config
from .quantizer import ANNOTATION_KEY, QuantizationAnnotation, QuantizationConfig, SharedQuantizationSpec
from .report import AnnotationReport

__all__ = ["ANNOTATORS", "AnnotationContext", "register_annotator", "is_annotated", "is_quantized_output"]

Annotator = Callable[["AnnotationContext"], None]
ANNOTATORS: dict[str, Annotator] = {}


def register_annotator(name: str) -> Callable[[Annotator], Annotator]:
    def deco(fn: Annotator) -> Annotator:
        if name in ANNOTATORS:
            raise ValueError(f"annotator {name!r} registered twice")
        ANNOTATORS[name] = fn
        return fn

    return deco


@dataclass
class AnnotationContext:
    model: GraphModule
    config_for: Callable[[Node], Optional[QuantizationConfig]]
    report: AnnotationReport
    # post-ops a fused chain may take, by name (aten_ops.UNARY_OPS values)
    unary_post_ops: frozenset = frozenset(UNARY_OPS.values())
    options: dict = field(default_factory=dict)
    chain_outputs: list = field(default_factory=list)  # last nodes of chains annotated here
    propagated: list = field(default_factory=list)  # int8-propagation nodes annotated here

    def nodes(self, pred: Callable[[Node], bool]) -> list[Node]:
        return [n for n in self.model.graph.nodes if n.op == "call_function" and pred(n)]


# ---- annotation helpers ------------------------------------------------------------------
def is_annotated(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    return ann is not None and ann._annotated


def is_quantized_output(node: object) -> bool:
    """The node's value is observed as a static quantized tensor (by any annotator)."""
    if not isinstance(node, Node):
        return False
    ann = node.meta.get(ANNOTATION_KEY)
    spec = ann.output_qspec if ann is not None else None
    return spec is not None and not getattr(spec, "is_dynamic", False)


def _mark(nodes: list[Node]) -> None:
    for n in nodes:
        n.meta[ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)


def _edge(node: Node, arg: object, spec) -> None:
    if isinstance(arg, Node) and spec is not None:
        node.meta[ANNOTATION_KEY].input_qspec_map[arg] = spec


# ---- fused chains: conv / linear [-> bn] [-> unary | -> add [-> relu]] -------------------
@dataclass
class _Chain:
    nodes: list[Node]
    name: str  # dotted pattern name, e.g. "conv2d.bn.add.relu"
    add: Optional[Node] = None  # the add node and its other operand (binary post-op)
    add_other: Optional[Node] = None
    fusable: bool = True


def _anchor_kind(node: Node) -> Optional[str]:
    return conv_kind(node) or ("linear" if node.target in LINEAR_OPS else None)


def _next_in_chain(cur: Node) -> Optional[Node]:
    user = only_user(cur)
    if user is None or user.op != "call_function" or is_annotated(user):
        return None
    return user


def _is_eval_dropout(node: object) -> bool:
    return is_op(node, DROPOUT_OPS) and len(node.args) > 2 and node.args[2] is False


def _skip_eval_dropout(cur: Node, nodes: list[Node]) -> Node:
    """Walk over eval-mode dropout (an identity Inductor removes) as a middle chain node."""
    user = _next_in_chain(cur)
    while _is_eval_dropout(user) and user.args[0] is cur:
        nodes.append(user)
        cur, user = user, _next_in_chain(user)
    return cur


def _match_add(cur: Node, add: Node) -> Optional[Node]:
    """The other operand if `add` is `cur + other` / `other + cur` on equal shapes."""
    if not is_op(add, ADD_OPS) or add.kwargs.get("alpha", 1) != 1 or len(add.args) != 2:
        return None
    a, b = add.args
    other = b if a is cur else a if b is cur else None
    if other is None or other is cur or not is_float_tensor(other) or not same_shape(cur, other):
        return None
    return other


def _match_chain(ctx: AnnotationContext, anchor: Node, kind: str, tail: tuple[str, ...]) -> Optional[_Chain]:
    nodes, names, cur, add, other = [anchor], [kind], anchor, None, None
    fusable = True
    bn = _next_in_chain(cur)
    if kind.startswith("conv") and is_op(bn, BATCH_NORM_OPS) and bn.args[0] is cur:
        nodes.append(bn), names.append("bn")
        cur = bn
    for step in tail:
        cur = _skip_eval_dropout(cur, nodes)
        user = _next_in_chain(cur)
        if user is None:
            return None
        if step == "unary":
            post_op = UNARY_OPS.get(user.target)
            if post_op is None or post_op not in ctx.unary_post_ops or user.args[0] is not cur:
                return None
            fusable &= onednn_fuses(kind, post_op)
            names.append(post_op)
        elif step == "relu":
            if not is_op(user, RELU_OPS) or user.args[0] is not cur:
                return None
            names.append("relu")
        elif step == "add":
            other = _match_add(cur, user)
            if other is None:
                return None
            fusable &= onednn_fuses(kind, "add")
            names.append("add")
            add = user
        nodes.append(user)
        cur = user
    return _Chain(nodes, ".".join(names), add, other, fusable)


def _annotate_chain(ctx: AnnotationContext, chain: _Chain, config: QuantizationConfig) -> None:
    anchor, last = chain.nodes[0], chain.nodes[-1]
    _mark(chain.nodes)
    x, w = anchor.args[0], anchor.args[1]
    bias = anchor.args[2] if len(anchor.args) > 2 else anchor.kwargs.get("bias")
    _edge(anchor, x, config.input_activation)
    _edge(anchor, w, config.weight)
    _edge(anchor, bias, config.bias)
    if chain.add is not None and not chain.name.startswith("linear"):
        _edge(chain.add, chain.add_other, config.input_activation)
    if not is_dynamic_config(config):  # dynamic: the output stays float whatever the config says
        last.meta[ANNOTATION_KEY].output_qspec = config.output_activation
    ctx.chain_outputs.append(last)
    ctx.report.patterns[chain.name] += 1
    if not chain.fusable:
        ctx.report.not_onednn_fusable[chain.name] += 1


def _anchor_config(ctx: AnnotationContext, node: Node, kind: str) -> Optional[QuantizationConfig]:
    """The config for an anchor, or None (with the reason noted) if it must stay float."""
    if is_annotated(node):
        return None
    config = ctx.config_for(node)
    if config is None:
        ctx.report.note_skip(node, "config is None")
        return None
    if not is_float_tensor(node) or not is_float_tensor(node.args[0]) or not is_float_tensor(node.args[1]):
        ctx.report.note_skip(node, "not a float input/weight")
        return None
    if not is_constant(node.args[1]):
        ctx.report.note_skip(node, "weight is computed from graph inputs (not a constant)")
        return None
    if is_dynamic_config(config) and kind != "linear":
        ctx.report.note_skip(node, "dynamic config (applies to linear only)")
        return None
    return config


def _make_fusion_annotator(family: str, tail: tuple[str, ...]) -> Annotator:
    def annotate(ctx: AnnotationContext) -> None:
        for node in ctx.nodes(_anchor_kind):
            kind = _anchor_kind(node)
            if kind is None or (family == "conv") != kind.startswith("conv"):
                continue
            config = _anchor_config(ctx, node, kind)
            if config is None or (tail and is_dynamic_config(config)):
                continue
            if is_dynamic_config(config):  # linear only: input + weight, output stays float
                _annotate_chain(ctx, _Chain([node], kind + ".dynamic"), config)
                continue
            chain = _match_chain(ctx, node, kind, tail)
            if chain is not None:
                _annotate_chain(ctx, chain, config)

    return annotate


# "conv.add.relu", "conv.add", "conv.unary", "conv", "linear.add.relu", ...
for _family, _tail in itertools.product(("conv", "linear"), (("add", "relu"), ("add",), ("unary",), ())):
    register_annotator(".".join((_family, *_tail)))(_make_fusion_annotator(_family, _tail))


@register_annotator("matmul")
def _annotate_matmul(ctx: AnnotationContext) -> None:
    """Opt-in (`options["matmul"]`): both operands and the output of matmul/bmm."""
    if not ctx.options.get("matmul"):
        return
    for node in ctx.nodes(lambda n: n.target in MATMUL_OPS):
        config = None if is_annotated(node) else ctx.config_for(node)
        if config is None or is_dynamic_config(config) or not all(is_float_tensor(a) for a in node.args[:2]):
            continue
        _mark([node])
        for arg in node.args[:2]:
            _edge(node, arg, config.input_activation)
        node.meta[ANNOTATION_KEY].output_qspec = config.output_activation
        ctx.chain_outputs.append(node)
        ctx.report.patterns["matmul"] += 1


# ---- standalone binary ops (generic/XNNPACK recipe) ---------------------------------------
def _make_binary_annotator(ops: frozenset, name: str, with_relu: bool) -> Annotator:
    def annotate(ctx: AnnotationContext) -> None:
        for node in ctx.nodes(lambda n: n.target in ops):
            config = None if is_annotated(node) else ctx.config_for(node)
            if config is None or is_dynamic_config(config) or not is_float_tensor(node):
                continue
            operands = [a for a in node.args[:2] if isinstance(a, Node) and is_float_tensor(a)]
            if not operands:
                continue
            chain = [node]
            if with_relu:
                relu = _next_in_chain(node)
                if not is_op(relu, RELU_OPS) or relu.args[0] is not node:
                    continue
                chain.append(relu)
            _mark(chain)
            for arg in operands:
                _edge(node, arg, config.input_activation)
            chain[-1].meta[ANNOTATION_KEY].output_qspec = config.output_activation
            ctx.report.patterns[name] += 1

    return annotate


register_annotator("add.relu")(_make_binary_annotator(ADD_OPS, "add.relu", True))
register_annotator("add")(_make_binary_annotator(ADD_OPS, "add", False))
register_annotator("mul.relu")(_make_binary_annotator(MUL_OPS, "mul.relu", True))
register_annotator("mul")(_make_binary_annotator(MUL_OPS, "mul", False))


# ---- int8-in / int8-out propagation ------------------------------------------------------
_PROPAGATED_NAME = {"max_pool2d": "maxpool2d", "avg_pool2d": "avgpool2d", "adaptive_avg_pool2d": "adaptive_avgpool2d"}


@register_annotator("int8_propagation")
def _annotate_propagation(ctx: AnnotationContext) -> None:
    """pool / cat / flatten / reshape / view / permute / eval dropout stay int8 (input qparams).

    Only when the input is already quantized (so an isolated pool gets no q/dq of its own):
        input edge:  SharedQuantizationSpec(producer)   -- the producer's output observer
        output:      SharedQuantizationSpec((producer, node))
    cat: every input must be quantized; the first input's edge shares the first producer's
    observer, the other edges and the output share that edge (one scale for the result).
    Runs in graph order, so a chain conv -> maxpool -> flatten propagates end to end.
    """
    for node in ctx.nodes(lambda n: n.target in POOL_OPS or n.target in SHAPE_OPS or n.target in CAT_OPS
                          or _is_eval_dropout(n)):
        if is_annotated(node):
            continue
        inputs = list(node.args[0]) if node.target in CAT_OPS else [node.args[0]]
        if not inputs or not all(is_quantized_output(i) for i in inputs):
            continue
        config = ctx.config_for(node)
        if config is None or is_dynamic_config(config):
            continue
        first = inputs[0]
        _mark([node])
        _edge(node, first, SharedQuantizationSpec(first))
        for other in dict.fromkeys(inputs[1:]):  # cat([y, y]): one edge per producer
            if other is first:
                continue
            _edge(node, other, SharedQuantizationSpec((first, node)))
        node.meta[ANNOTATION_KEY].output_qspec = SharedQuantizationSpec((first, node))
        ctx.propagated.append(node)
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        ctx.report.patterns[_PROPAGATED_NAME.get(name, name)] += 1


# ---- finishing step ----------------------------------------------------------------------
def _consumed_quantized(node: Node) -> bool:
    for user in node.users:
        ann = user.meta.get(ANNOTATION_KEY)
        spec = ann.input_qspec_map.get(node) if ann is not None else None
        if spec is not None and not getattr(spec, "is_dynamic", False):
            return True
    return False


@register_annotator("prune_float_outputs")
def _prune_float_outputs(ctx: AnnotationContext) -> None:
    """Drop quantization nobody downstream uses (only what this call annotated):
    first int8-propagation nodes whose output only float ops consume (last to first, so
    linear -> view -> permute -> float matmul unwinds completely), then chain output specs.
    Off with `options["keep_float_outputs"]` (every chain then ends in a q/dq pair)."""
    if ctx.options.get("keep_float_outputs"):
        return
    for node in reversed(ctx.propagated):
        if not _consumed_quantized(node):
            del node.meta[ANNOTATION_KEY]
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            ctx.report.patterns[_PROPAGATED_NAME.get(name, name)] -= 1
    ctx.report.patterns = +ctx.report.patterns  # drop zero counts
    for node in ctx.chain_outputs:
        ann = node.meta[ANNOTATION_KEY]
        if ann.output_qspec is not None and not _consumed_quantized(node):
            ann.output_qspec = None
            ctx.report.float_outputs += 1
