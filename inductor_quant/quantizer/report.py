"""How much of a model a quantizer covered: convs/linears present vs annotated, by pattern.

`quantizer.last_report` holds the report of the latest `annotate` call; the same numbers go
to the `inductor_quant.quantizer` logger at INFO. `annotation_report(model)` recounts any
annotated graph (e.g. one annotated by a ComposableQuantizer or a third-party quantizer).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Optional

from torch.fx import GraphModule, Node

from .aten_ops import LINEAR_OPS, conv_kind, is_conv_transpose
from .quantizer import ANNOTATION_KEY

__all__ = ["AnnotationReport", "annotation_report"]


@dataclass
class AnnotationReport:
    """Counts per layer kind ("conv", "linear", "conv_transpose") and per fused pattern."""

    present: collections.Counter = field(default_factory=collections.Counter)
    annotated: collections.Counter = field(default_factory=collections.Counter)
    # dotted pattern name ("conv2d.bn.relu", "linear.add.relu", "maxpool2d") -> count
    patterns: collections.Counter = field(default_factory=collections.Counter)
    # patterns annotated as one chain although oneDNN cannot take the post-op as an attribute
    # (Inductor runs that op in generated C++ between the int8 conv/linear and the quantize)
    not_onednn_fusable: collections.Counter = field(default_factory=collections.Counter)
    # chain outputs left fp32 because no consumer takes them quantized (X86 prune step)
    float_outputs: int = 0
    # node name -> why it stayed float (convs, linears and conv_transposes only)
    skipped: dict[str, str] = field(default_factory=dict)

    def note_skip(self, node: Node, reason: str) -> None:
        self.skipped.setdefault(node.name, reason)

    def summary(self) -> str:
        parts = [f"{kind}s {self.annotated[kind]}/{self.present[kind]} annotated" for kind in sorted(self.present)]
        text = ", ".join(parts) or "no conv/linear layers"
        if self.skipped:
            reasons = collections.Counter(self.skipped.values())
            text += "; float: " + ", ".join(f"{n} x {r}" for r, n in reasons.most_common())
        return text

    def as_dict(self) -> dict:
        return {
            "present": dict(self.present),
            "annotated": dict(self.annotated),
            "patterns": dict(self.patterns),
            "not_onednn_fusable": dict(self.not_onednn_fusable),
            "float_outputs": self.float_outputs,
            "skipped": dict(self.skipped),
        }


def layer_kind(node: Node) -> Optional[str]:
    if conv_kind(node):
        return "conv"
    if node.op == "call_function" and node.target in LINEAR_OPS:
        return "linear"
    if is_conv_transpose(node):
        return "conv_transpose"
    return None


def _weight_annotated(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    weight = node.args[1] if len(node.args) > 1 else None
    return ann is not None and weight in ann.input_qspec_map and ann.input_qspec_map[weight] is not None


def annotation_report(model: GraphModule, report: Optional[AnnotationReport] = None) -> AnnotationReport:
    """Count layers present / annotated (weight edge has a spec) in `model`; fills `report`."""
    report = report if report is not None else AnnotationReport()
    report.present.clear()
    report.annotated.clear()
    for node in model.graph.nodes:
        kind = layer_kind(node)
        if kind is None:
            continue
        report.present[kind] += 1
        if _weight_annotated(node):
            report.annotated[kind] += 1
            report.skipped.pop(node.name, None)
        elif kind == "conv_transpose":
            report.note_skip(node, "conv_transpose stays float (no oneDNN int8 path)")
        else:
            report.note_skip(node, "no pattern matched")
    return report
