"""quantize(): the whole PTQ flow in one call (export -> prepare -> calibrate -> convert)."""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

import torch

from .errors import CalibrationError, export_failed
from .quantize_pt2e import convert_pt2e, prepare_pt2e

__all__ = ["quantize"]


def _default_quantizer():
    from .quantizer.x86_inductor_quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


def _as_args(batch: Any) -> tuple:
    return batch if isinstance(batch, tuple) else (batch,)


def quantize(
    model: torch.nn.Module,
    example_inputs: tuple,
    calibration: Iterable[Any],
    quantizer=None,
    dynamic_shapes: Optional[Any] = None,
    smooth: Optional[float] = None,
    gptq: bool = False,
) -> torch.fx.GraphModule:
    """Export `model` on `example_inputs`, prepare, run each `calibration` batch, convert.

    A batch is a tensor or a tuple of positional inputs. The default quantizer is
    X86InductorQuantizer with the default (static uint8/int8) config. `smooth`: SmoothQuant's
    alpha (0.5 is the usual), applied to the exported model on the calibration batches before
    prepare (`smooth_quant`; for per-token dynamic int8 linears). `gptq`: fit the 4-bit
    group-wise weights with GPTQ on the calibration batches (`inductor_quant.gptq`; its pass is
    the calibration; what it did per linear in the result's `meta["gptq"]`). A progress bar is shown only on a TTY.
    """
    example_inputs = _as_args(example_inputs)
    try:
        exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes).module()
    except Exception as exc:  # show the export error, plus the usual fixes
        raise export_failed(exc) from exc
    if smooth is not None or gptq:
        calibration = list(calibration)  # read twice (smoothing maxima, then the observers) / counted
    if smooth is not None:
        from .smooth_quant import smooth_quant

        smooth_quant(exported, [_as_args(b) for b in calibration], alpha=smooth)
    prepared = prepare_pt2e(exported, quantizer if quantizer is not None else _default_quantizer())
    batches = calibration
    if sys.stderr.isatty():
        from tqdm import tqdm

        batches = tqdm(calibration, desc="calibrating", unit="batch")
    seen, fitted = 0, None
    if gptq and calibration:
        from .gptq import gptq as fit_with_gptq

        fitted = fit_with_gptq(prepared, [_as_args(b) for b in batches])
        seen = len(calibration)
    else:
        with torch.no_grad():
            for batch in batches:
                prepared(*_as_args(batch))
                seen += 1
    if seen == 0:
        raise CalibrationError(
            "quantize(): the calibration iterable yielded no batches (an empty list or DataLoader, or "
            "a generator/iterator that was already consumed), so no activation ranges are known. "
            "Fix: pass a non-empty, re-iterable collection of batches, e.g. [x for x, _ in "
            "itertools.islice(loader, 32)]; calibration=[*example_inputs] works for a smoke test."
        )
    converted = convert_pt2e(prepared)
    if fitted is not None:
        converted.meta["gptq"] = fitted  # linear -> FITTED or why it kept round-to-nearest
    return converted
