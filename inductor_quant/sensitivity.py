"""skip_sensitive: keep the layers int8 hurts most in float until the model meets a target.

    result = skip_sensitive(model, (x,), calibration, target=25.0)       # end-to-end SQNR, dB
    result.model, result.quantizer, result.skipped                       # reuse the quantizer

Greedy, one layer per round: quantize, measure; if below target, rank layers with the
numeric debugger (worst local SQNR first: the layer's own error, not what it inherited),
skip the worst not yet skipped with `set_module_name_qconfig(path, None)`, and re-quantize
from the same export. Each round costs one prepare + calibrate + convert.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch.fx import GraphModule

from .numerics import Agreement, _batches, _flat_output, compare, float_graph
from .quantize_pt2e import convert_pt2e, prepare_pt2e

__all__ = ["SensitivityResult", "skip_sensitive"]

Metric = Callable[[Any, Any], float]  # (float_output, quantized_output) -> score, higher is better


@dataclass
class SensitivityResult:
    """The converted model chosen, the quantizer that made it (skips applied), and how we got there."""

    model: GraphModule
    quantizer: Any
    skipped: list[str]  # module paths left float, in the order they were skipped
    score: float  # metric of `model` on the evaluation batches
    target_met: bool
    history: list[tuple[tuple[str, ...], float]] = field(default_factory=list)  # (skipped, score) per round


def _default_quantizer():
    from .quantizer.x86_inductor_quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def _score(metric: Optional[Metric], float_outs: list, quant_outs: list) -> float:
    """Default: SQNR (dB) over all batches; a user metric is averaged over batches."""
    if metric is None:
        agreement = Agreement()
        for f, q in zip(float_outs, quant_outs):
            agreement.add(_flat_output(f), _flat_output(q))
        return agreement.sqnr
    return sum(float(metric(f, q)) for f, q in zip(float_outs, quant_outs)) / len(float_outs)


def _quantize(exported: GraphModule, quantizer, calibration: list[tuple]) -> GraphModule:
    prepared = prepare_pt2e(copy.deepcopy(exported), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*batch)
    return convert_pt2e(prepared)


def skip_sensitive(
    model: torch.nn.Module,
    example_inputs: Any,
    calibration: Iterable[Any],
    *,
    metric: Optional[Metric] = None,
    target: float = 30.0,
    quantizer_factory: Optional[Callable[[], Any]] = None,
    max_skips: int = 8,
    eval_inputs: Optional[Any] = None,
    dynamic_shapes: Optional[Any] = None,
) -> SensitivityResult:
    """Quantize `model`, leaving its most sensitive conv/linear layers float until `target`.

    `metric(float_out, quant_out) -> float` (higher is better) replaces the default, the
    end-to-end SQNR in dB. `quantizer_factory()` returns a fresh configured quantizer
    (default: X86InductorQuantizer with the default config); skips are added on top of its
    configuration. `eval_inputs` (a list of batches) defaults to the calibration batches.
    Stops at the target or after `max_skips` skips; then returns the best-scoring round, with
    a warning if the target was not met.
    """
    factory = quantizer_factory or _default_quantizer
    example_inputs = _batches(example_inputs)[0]
    calibration = _batches(list(calibration))
    evaluation = _batches(list(eval_inputs)) if eval_inputs is not None else calibration
    exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes).module()
    reference = float_graph(exported, example_inputs)
    with torch.no_grad():
        float_outs = [reference(*b) for b in evaluation]

    skipped: list[str] = []
    history: list[tuple[tuple[str, ...], float]] = []
    best: Optional[SensitivityResult] = None
    while True:
        quantizer = factory()
        for name in skipped:
            quantizer.set_module_name_qconfig(name, None)
        converted = _quantize(exported, quantizer, calibration)
        with torch.no_grad():
            score = _score(metric, float_outs, [converted(*b) for b in evaluation])
        history.append((tuple(skipped), score))
        if best is None or score > best.score:
            best = SensitivityResult(converted, quantizer, list(skipped), score, score >= target)
        if score >= target or len(skipped) >= max_skips:
            break
        report = compare(reference, converted, evaluation)
        candidates = [layer.module for layer in report.worst() if layer.module not in skipped]
        if not candidates:
            break
        skipped.append(candidates[0])
    best.history = history
    if not best.target_met:
        warnings.warn(
            f"skip_sensitive: target {target} not met after skipping {len(skipped)} layer(s) "
            f"(best score {best.score:.4g} with {best.skipped}); raise max_skips, lower the target, "
            "or check the float model and calibration data", stacklevel=2)
    return best
