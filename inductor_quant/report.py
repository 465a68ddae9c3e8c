"""Fusion report: what each quantized layer became after torch.compile, and what stayed fp32.

Three sources, one report: the quantizer's coverage (layers present vs annotated), our passes'
stats (rewrites per fusion id, unfused layers with the reason) and the generated code itself
(which oneDNN int8 ops it calls, and whether any fp32 conv/GEMM is left). `strict_failures()`
lists what makes `inductor-quant report --strict` exit non-zero.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from . import generated_code
from .kernels import compat
from .kernels.cpu import cpu_info
from .passes import reasons

__all__ = ["FusionReport", "fusion_report", "onednn_op_calls", "fp32_compute_calls"]

LAYER_OPS = ("conv", "linear")  # the layers (a oneDNN int8 op each); other unfused entries are cats, pools, views
# unfused entries that are a choice, not a gap (average pools: exact only in fp32): listed, never a --strict failure
BY_DESIGN = frozenset(w.code for w in reasons.BY_DESIGN)


# the names this module has always exported, for the one detector (generated_code.py)
onednn_op_calls = generated_code.onednn_int8_calls
fp32_compute_calls = generated_code.float_compute_calls


@dataclass
class FusionReport:
    present: dict = field(default_factory=dict)      # layer kind -> count in the float graph
    annotated: dict = field(default_factory=dict)    # layer kind -> quantized by the quantizer
    float_layers: dict = field(default_factory=dict)  # node -> why the quantizer left it float
    fused: dict = field(default_factory=dict)        # fusion id -> rewrites (passes.stats)
    unfused: list = field(default_factory=list)      # [(op, node, reason, code)] from the passes (stats.Unfused)
    onednn_ops: dict = field(default_factory=dict)   # op -> calls in the generated code
    fp32_ops: dict = field(default_factory=dict)     # fp32 conv/GEMM calls left in the code
    wrapper: str = "python"
    code_seen: bool = True  # False where this torch does not hand out the generated code
    cpu: str = field(default_factory=lambda: cpu_info().summary())  # what oneDNN runs on (kernels/cpu.py)

    @property
    def int8_layers(self) -> int:
        return sum(n for op, n in self.onednn_ops.items() if "conv" in op or "linear" in op)

    def strict_failures(self) -> list[str]:
        """Quantized ops left in fp32 (conv/linear that did not become a oneDNN int8 op; cats, pools,
        views not run on int8), except those left in fp32 by design."""
        problems = [f"{node} ({op}): {reason}" for op, node, reason, code in self.unfused if code not in BY_DESIGN]
        quantized = sum(self.annotated.values())
        calls = quantized - self.fused.get("merge.sibling_linears.absorbed", 0)  # merged siblings share a call
        if not problems and self.code_seen and self.int8_layers < calls:
            problems.append(f"{quantized} layers quantized ({calls} oneDNN int8 calls expected after merging "
                            f"sibling linears) but only {self.int8_layers} generated")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, int8_layers=self.int8_layers, strict_failures=self.strict_failures())

    def text(self) -> str:
        lines = ["Fusion report (" + self.wrapper + " wrapper)", "  CPU: " + self.cpu]
        for kind in sorted(self.present):
            lines.append(f"  {kind + 's':8} {self.annotated.get(kind, 0):4d} / {self.present[kind]:<4d} quantized")
        lines.append("  generated code calls: " + (", ".join(f"{op} x{n}" for op, n in sorted(self.onednn_ops.items()))
                                                    or "no oneDNN int8 op"))
        if self.fp32_ops:
            lines.append("  fp32 conv/GEMM left: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.fp32_ops.items())))
        if self.fused:
            lines.append("  rewrites: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.fused.items())))
        for node, reason in sorted(self.float_layers.items()):
            lines.append(f"  float (quantizer): {node}: {reason}")
        for op, node, reason, code in self.unfused:
            lines.append(f"  {'fp32 (by design)' if code in BY_DESIGN else 'UNFUSED'} {op} {node}: {reason}")
        return "\n".join(lines)

    def snapshot(self) -> str:
        """Stable text for golden-file / expecttest comparisons (no timings, no node names)."""
        lines = [f"{k}: {self.annotated.get(k, 0)}/{v} quantized" for k, v in sorted(self.present.items())]
        lines += [f"onednn.{op}: {n}" for op, n in sorted(self.onednn_ops.items())]
        lines += [f"fp32.{op}: {n}" for op, n in sorted(self.fp32_ops.items())]
        lines += [f"unfused: {op}: {reason}" for op, _, reason, _ in sorted(self.unfused)]
        return "\n".join(lines) + "\n"


def _is_dequantized(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and "dequantize" in str(node.target)


def fusion_report(model: torch.nn.Module, example_inputs: tuple, calibration=None, quantizer=None,
                  converted: Optional[torch.fx.GraphModule] = None, cpp_wrapper: bool = False,
                  bf16: bool = False) -> FusionReport:
    """Quantize `model` (unless it, or `converted`, is already a Q/DQ model), compile it with
    freezing, and report.

    Quantized layers are counted on the converted graph (a conv/linear whose weight is
    dequantized), so the report works for models from any PT2E quantizer.

    `calibration` defaults to `[example_inputs]`; `quantizer` to the default X86 static one.
    """
    from . import passes
    from .api import _default_quantizer, quantize
    from .quantizer.report import layer_kind

    from .quantize_pt2e import _has_quantized_weights

    report = FusionReport(wrapper="cpp" if cpp_wrapper else "python")
    if converted is None and isinstance(model, torch.fx.GraphModule) and _has_quantized_weights(model):
        converted = model  # already a Q/DQ model (converted, or loaded with torch.export.load)
    if converted is None:
        quantizer = quantizer or _default_quantizer()
        with passes.installed():  # convert installs our passes; the report leaves them as it found them
            converted = quantize(model, example_inputs, calibration or [example_inputs], quantizer=quantizer)
        coverage = getattr(quantizer, "last_report", None)
        report.float_layers = dict(coverage.skipped) if coverage is not None else {}
    present, quantized = collections.Counter(), collections.Counter()
    for node in converted.graph.nodes:
        kind = layer_kind(node)
        if kind:
            present[kind] += 1
            quantized[kind] += _is_dequantized(node.args[1] if len(node.args) > 1 else None)
    report.present, report.annotated = dict(present), dict(quantized)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # a fresh module (its own forward code object, so no compiled entry of the user's is reused
    # or discarded), no FX graph cache (a hit would skip our passes and their counts), our passes
    # installed only for this compile and the user's stats() left as they were
    fresh = torch.fx.GraphModule(converted, converted.graph)
    with passes.installed(), passes.isolated_stats(), torch.no_grad(), autocast, \
            torch._inductor.config.patch(freezing=True, cpp_wrapper=cpp_wrapper, fx_graph_cache=False):
        _, codes = compat.run_and_get_code(torch.compile(fresh), *example_inputs)
        stats = passes.stats()
    report.code_seen = codes is not None
    code = "\n".join(codes or ())
    report.fused, report.unfused = dict(stats["fused"]), list(stats["unfused"])
    report.onednn_ops, report.fp32_ops = dict(onednn_op_calls(code)), dict(fp32_compute_calls(code))
    return report
