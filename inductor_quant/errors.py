"""Error types of the quantization flow. Every message names the problem and the fix."""

from __future__ import annotations

EXPORT_LINE = "model = torch.export.export(model, example_inputs).module()"


class QuantizationFlowError(RuntimeError):
    """Base class: the flow was used in a way that cannot work."""


class NotExportedError(QuantizationFlowError, TypeError):
    """prepare_* got an eager nn.Module instead of an exported graph."""


class AnnotationError(QuantizationFlowError, ValueError):
    """A quantizer annotation references something that is not in the graph."""


class CalibrationError(QuantizationFlowError, ValueError):
    """Observers saw no data, or non-finite data, or the calibration iterable was empty."""


class ExportFailedError(QuantizationFlowError):
    """torch.export could not capture the model."""


def not_exported(fn_name: str, model: object) -> NotExportedError:
    return NotExportedError(
        f"{fn_name} expects a model captured by torch.export, got {type(model).__name__}. "
        f"Export it first:\n    {EXPORT_LINE}\n"
        "(torch._export.capture_pre_autograd_graph no longer exists; an ExportedProgram is also accepted.)"
    )


def export_failed(exc: BaseException) -> ExportFailedError:
    return ExportFailedError(
        f"torch.export.export could not capture the model:\n    {type(exc).__name__}: {exc}\n"
        "Usual fixes: call model.eval() first for PTQ; make sure example_inputs is a tuple of "
        "tensors matching forward(); replace data-dependent Python control flow (if x.sum() > 0) "
        "with torch.cond or move it out of forward; pass dynamic_shapes=... for varying batch "
        "sizes; see the torch.export docs (ExportDB) for supported constructs."
    )


class UnsupportedModelError(QuantizationFlowError, ValueError):
    """The model cannot be quantized as it is (dtype, device, weights not materialized)."""


class InputMismatchError(QuantizationFlowError, ValueError):
    """A prepared/converted model got inputs unlike the ones it was exported for."""

