"""Observer construction from specs, and the guards that keep qparams finite.

Users bring observer / fake-quant constructors from `torch.ao.quantization` (including
`HistogramObserver.with_args(eps=2-12)` with a *negative* eps, as the annotation tutorial
literally writes it). Whatever they bring, `qparams_of` returns a finite scale > 0 and a zero
point inside [quant_min, quant_max]; non-finite calibration data is an error naming the layer
(we never silently skip NaN/inf: a NaN in activations usually means a broken model or input).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.ao.quantization.fake_quantize import FakeQuantizeBase, FixedQParamsFakeQuantize
from torch.ao.quantization.observer import (
    FixedQParamsObserver,
    ObserverBase,
    PlaceholderObserver,
)

from .errors import CalibrationError
from .quantizer.llm_observers import GroupwiseMinMaxObserver, PerTokenDynamicObserver
from .quantizer.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
)

# The smallest scale we emit: float32 eps, as torch's observers use by default.
MIN_SCALE = float(torch.finfo(torch.float32).eps)

_QTYPE_TO_DTYPE = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.qint32: torch.int32}
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


class DerivedQParams(nn.Module):
    """Placeholder for a DerivedQuantizationSpec: qparams come from other observers at convert.

    The source observers are held in a plain list (not submodules) so they are not duplicated
    in state_dict; they are real submodules of the same GraphModule.
    """

    def __init__(self, spec: DerivedQuantizationSpec, sources: list[nn.Module]):
        super().__init__()
        self.dtype = spec.dtype
        self.qscheme = spec.qscheme
        self.ch_axis = spec.ch_axis if spec.ch_axis is not None else 0
        info = torch.iinfo(spec.dtype)
        self.quant_min = spec.quant_min if spec.quant_min is not None else info.min
        self.quant_max = spec.quant_max if spec.quant_max is not None else info.max
        self.sources = sources
        self.derive_qparams_fn = spec.derive_qparams_fn

    def forward(self, x):
        return x

    def calculate_qparams(self):
        return self.derive_qparams_fn(self.sources)


class FiniteInputCheck:
    """Forward pre-hook on calibration observers: NaN/inf input -> CalibrationError naming the layer.

    Observers would otherwise fail cryptically (HistogramObserver: "torch.histc: range of
    [-nan, -nan] is not finite") or produce NaN scales. Fake-quant (QAT) is not checked.
    """

    def __init__(self, layer: str):
        self.layer = layer

    @staticmethod
    def attach(mod: nn.Module, layer: str) -> None:
        if isinstance(mod, ObserverBase) and not isinstance(mod, (PlaceholderObserver, FixedQParamsObserver)):
            mod.register_forward_pre_hook(FiniteInputCheck(layer))

    def __call__(self, mod: nn.Module, args: tuple) -> None:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise CalibrationError(
                f"observer for {self.layer} got NaN or inf values during calibration, so no finite "
                "quantization parameters exist. Fix: check the model/inputs for NaN/inf "
                "(torch.isfinite(x).all()) and calibrate with finite data."
            )


def group_size(mod: nn.Module) -> Optional[int]:
    """The group size of a group-wise weight observer (None: not group-wise)."""
    inner = getattr(mod, "activation_post_process", mod)
    return getattr(inner, "group_size", None) if isinstance(inner, GroupwiseMinMaxObserver) else None


def float_zero_points(mod: nn.Module) -> bool:
    """Whether the observer fits a float zero point (an offset) per channel or group
    (GroupwiseLeastSquaresObserver) rather than an integer one."""
    return bool(getattr(getattr(mod, "activation_post_process", mod), "float_zero_points", False))


def per_token(mod: nn.Module) -> bool:
    """A per-token dynamic activation observer (one scale per row, chosen at run time)."""
    return isinstance(getattr(mod, "activation_post_process", mod), PerTokenDynamicObserver)


def make_observer(spec, is_qat: bool) -> nn.Module:
    """Instantiate the observer / fake-quant a spec asks for (spec fields override ctor defaults)."""
    if isinstance(spec, FixedQParamsQuantizationSpec):
        kwargs = dict(scale=spec.scale, zero_point=spec.zero_point, dtype=spec.dtype,
                      qscheme=spec.qscheme or torch.per_tensor_affine)
        _set_range(kwargs, spec)
        if is_qat:
            return FixedQParamsFakeQuantize(observer=FixedQParamsObserver.with_args(**kwargs))
        return FixedQParamsObserver(**kwargs)
    assert isinstance(spec, QuantizationSpec), spec
    kwargs = dict(dtype=spec.dtype)
    if spec.qscheme is not None:
        kwargs["qscheme"] = spec.qscheme
    _set_range(kwargs, spec)
    if spec.ch_axis is not None and (spec.qscheme in _PER_CHANNEL):
        kwargs["ch_axis"] = spec.ch_axis
    if spec.is_dynamic:
        kwargs["is_dynamic"] = True
    return spec.observer_or_fake_quant_ctr(**kwargs)


def _set_range(kwargs: dict, spec) -> None:
    if spec.quant_min is not None:
        kwargs["quant_min"] = spec.quant_min
    if spec.quant_max is not None:
        kwargs["quant_max"] = spec.quant_max


def is_observer(mod: nn.Module) -> bool:
    return isinstance(mod, (ObserverBase, FakeQuantizeBase, DerivedQParams))


def target_dtype(mod: nn.Module) -> torch.dtype:
    dtype = getattr(mod, "dtype", torch.float32)
    return _QTYPE_TO_DTYPE.get(dtype, dtype)


def is_dynamic(mod: nn.Module) -> bool:
    inner = getattr(mod, "activation_post_process", mod)
    return bool(getattr(mod, "is_dynamic", False) or getattr(inner, "is_dynamic", False))


def quant_range(mod: nn.Module) -> tuple[int, int]:
    dtype = target_dtype(mod)
    info = torch.iinfo(dtype)
    qmin, qmax = getattr(mod, "quant_min", None), getattr(mod, "quant_max", None)
    return (info.min if qmin is None else int(qmin), info.max if qmax is None else int(qmax))


def is_per_channel(mod: nn.Module) -> bool:
    return getattr(mod, "qscheme", None) in _PER_CHANNEL


def channel_axis(mod: nn.Module) -> int:
    return int(getattr(mod, "ch_axis", 0))


def _min_max(mod: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    inner = getattr(mod, "activation_post_process", mod)
    if isinstance(inner, (FixedQParamsObserver, PlaceholderObserver, DerivedQParams)):
        return None
    lo, hi = getattr(inner, "min_val", None), getattr(inner, "max_val", None)
    if not isinstance(lo, torch.Tensor) or not isinstance(hi, torch.Tensor):
        return None
    return lo, hi


def saw_data(mod: nn.Module) -> bool:
    """False for a min/max observer that was never run (min > max or empty per-channel stats)."""
    mm = _min_max(mod)
    if mm is None:
        return True
    lo, hi = mm
    return lo.numel() > 0 and not bool((lo > hi).any())


def saw_nonfinite(mod: nn.Module) -> bool:
    mm = _min_max(mod)
    return mm is not None and not bool(torch.isfinite(mm[0]).all() and torch.isfinite(mm[1]).all())


def qparams_of(mod: nn.Module, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) as float32 / int64 tensors (float32 zero points where the observer fits
    them, float_zero_points), guaranteed finite, scale > 0, zp in range."""
    if saw_nonfinite(mod):
        raise CalibrationError(
            f"observer for {layer} saw NaN or inf values during calibration, so no finite "
            "quantization parameters exist. Fix: check the model/inputs for NaN/inf (e.g. "
            "torch.isfinite(x).all()) and calibrate with finite data."
        )
    scale, zp = mod.calculate_qparams()
    scale = torch.as_tensor(scale, dtype=torch.float32).detach().clone().reshape(-1)
    zp = torch.as_tensor(zp).detach().clone().reshape(-1).to(torch.float32 if float_zero_points(mod) else torch.int64)
    bad = ~torch.isfinite(scale) | (scale < MIN_SCALE)
    scale = torch.where(bad, torch.full_like(scale, MIN_SCALE), scale)
    qmin, qmax = quant_range(mod)
    zp = zp.clamp(qmin, qmax)
    return scale, zp
