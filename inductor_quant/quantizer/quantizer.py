"""The annotation API: how a quantizer tells prepare_pt2e what to observe.

A quantizer writes a `QuantizationAnnotation` into `node.meta["quantization_annotation"]`.
Input specs annotate *edges* (producer node -> this node), the output spec annotates the
node's value. Names and fields match the PT2E API users know, so a quantizer written for
`torch.ao.quantization.quantizer` works after changing its import line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

__all__ = [
    "ANNOTATION_KEY",
    "EdgeOrNode",
    "ObserverOrFakeQuantize",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "Quantizer",
]

ANNOTATION_KEY = "quantization_annotation"

# An input edge (producer, consumer) or a node's output value.
EdgeOrNode = Union[tuple[Node, Node], Node]
ObserverOrFakeQuantize = Union[
    torch.ao.quantization.observer.ObserverBase,
    torch.ao.quantization.fake_quantize.FakeQuantizeBase,
]
ObserverOrFakeQuantizeConstructor = Callable[..., ObserverOrFakeQuantize]

_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


class QuantizationSpecBase(ABC):  # noqa: B024 - marker base, like upstream
    """Base of every spec kind; prepare dispatches on the concrete class."""


def _check_range(dtype: torch.dtype, quant_min: Optional[int], quant_max: Optional[int]) -> None:
    if quant_min is not None and quant_max is not None and quant_min > quant_max:
        raise ValueError(f"quant_min ({quant_min}) must be <= quant_max ({quant_max})")
    if dtype.is_floating_point or dtype == torch.bool:
        return
    info = torch.iinfo(dtype)
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if v is not None and not info.min <= v <= info.max:
            raise ValueError(f"{name}={v} does not fit {dtype} [{info.min}, {info.max}]")


@dataclass(eq=True, frozen=True)
class QuantizationSpec(QuantizationSpecBase):
    """How one tensor is quantized and which observer/fake-quant measures it."""

    dtype: torch.dtype
    observer_or_fake_quant_ctr: ObserverOrFakeQuantizeConstructor
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_range(self.dtype, self.quant_min, self.quant_max)
        if self.ch_axis is not None and self.ch_axis < 0:
            raise ValueError("ch_axis must be >= 0")
        if self.qscheme in _PER_CHANNEL and self.ch_axis is None:
            object.__setattr__(self, "ch_axis", 0)


@dataclass(eq=True, frozen=True)
class FixedQParamsQuantizationSpec(QuantizationSpecBase):
    """A tensor whose scale/zero point are known up front (e.g. sigmoid output: 1/256, 0)."""

    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_range(self.dtype, self.quant_min, self.quant_max)
        if not (self.scale > 0 and self.scale < float("inf")):
            raise ValueError(f"FixedQParamsQuantizationSpec scale must be finite and > 0, got {self.scale}")


@dataclass(eq=True, frozen=True)
class SharedQuantizationSpec(QuantizationSpecBase):
    """Use the same observer (hence the same qparams) as another edge or node. Transitive."""

    edge_or_node: EdgeOrNode


@dataclass(eq=True, frozen=True)
class DerivedQuantizationSpec(QuantizationSpecBase):
    """qparams computed from other observers, e.g. bias scale = act scale * weight scale.

    `derive_qparams_fn(list_of_observers) -> (scale, zero_point)`.
    """

    derived_from: list[EdgeOrNode]
    derive_qparams_fn: Callable[[list[ObserverOrFakeQuantize]], tuple[Tensor, Tensor]]
    dtype: torch.dtype
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False

    def __hash__(self) -> int:  # derived_from is a list
        return hash((tuple(self.derived_from), self.derive_qparams_fn, self.dtype, self.qscheme))


@dataclass
class QuantizationAnnotation:
    """What to observe around one node: its input edges and its output value."""

    input_qspec_map: dict[Node, Optional[QuantizationSpecBase]] = field(default_factory=dict)
    output_qspec: Optional[QuantizationSpecBase] = None
    # False: never share this node's output observer implicitly with a consumer's input.
    allow_implicit_sharing: bool = True
    _annotated: bool = False


@dataclass(eq=True, frozen=True)
class QuantizationConfig:
    """Specs a quantizer applies to one operator pattern (activation in/out, weight, bias)."""

    input_activation: Optional[QuantizationSpec]
    output_activation: Optional[QuantizationSpec]
    weight: Optional[QuantizationSpec]
    bias: Optional[QuantizationSpecBase]
    is_qat: bool = False


class Quantizer(ABC):
    """A backend's description of what to quantize. prepare_pt2e calls, in order:
    `transform_for_annotation` -> `annotate` -> `validate`, then inserts observers, then
    `prepare_obs_or_fq_callback` with the edge/node -> observer map."""

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return model

    @abstractmethod
    def annotate(self, model: GraphModule) -> GraphModule: ...

    @abstractmethod
    def validate(self, model: GraphModule) -> None: ...

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict[Any, Any]) -> None:
        return None
