"""The machinery X86InductorQuantizer and XNNPACKQuantizer share: config API + annotator list."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten

from .annotators import ANNOTATORS, AnnotationContext
from .aten_ops import UNARY_OPS
from .qconfig_resolver import QConfigResolver
from .quantizer import ANNOTATION_KEY, QuantizationConfig, Quantizer
from .report import AnnotationReport, annotation_report

__all__ = ["AnnotatingQuantizer"]

log = logging.getLogger("inductor_quant.quantizer")


def _check_config(config: Any) -> Optional[QuantizationConfig]:
    if config is not None and not isinstance(config, QuantizationConfig):
        raise TypeError(
            f"expected a QuantizationConfig or None (None leaves the layers float), got {type(config).__name__}"
        )
    return config


class AnnotatingQuantizer(Quantizer):
    """A quantizer defined by an ordered list of registered annotators (annotators.py).

    Subclasses set `annotator_order` (priority order: fusion patterns before single ops)
    and `unary_post_ops` (which unary ops a conv/linear chain may absorb). Which config a
    node gets is decided by `QConfigResolver` — its docstring is the precedence contract
    (module name > module type > function type > global; None skips).

    After `annotate`, `last_report` holds an `AnnotationReport`: convs/linears present vs
    annotated, counts per fused pattern, and why each layer left float stayed float.
    """

    annotator_order: tuple[str, ...] = ()
    unary_post_ops: frozenset = frozenset(UNARY_OPS.values())

    def __init__(self) -> None:
        self._resolver = QConfigResolver()
        self.options: dict[str, Any] = {}
        self.last_report: Optional[AnnotationReport] = None
        unknown = [name for name in self.annotator_order if name not in ANNOTATORS]
        if unknown:
            raise ValueError(f"unknown annotators {unknown}; registered: {sorted(ANNOTATORS)}")

    # ---- configuration (each returns self, so calls chain) -----------------------------
    def _checked(self, config: Any) -> Optional[QuantizationConfig]:
        """Type-check `config` and refuse QAT and PTQ configs in one quantizer (prepare_pt2e
        and prepare_qat_pt2e insert different observers; one of them would be wrong)."""
        config = _check_config(config)
        if config is not None:
            r = self._resolver
            others = [r.global_config, *r.module_name.values(), *r.module_type.values(), *r.function_type.values()]
            clash = next((c for c in others if c is not None and c.is_qat != config.is_qat), None)
            if clash is not None:
                raise ValueError(
                    f"{type(self).__name__}: cannot mix QAT (is_qat=True) and PTQ configs in one quantizer; "
                    "use is_qat=True everywhere for prepare_qat_pt2e, or is_qat=False for prepare_pt2e"
                )
        return config

    def set_global(self, quantization_config: Optional[QuantizationConfig]) -> "AnnotatingQuantizer":
        self._resolver.global_config = None
        self._resolver.global_config = self._checked(quantization_config)
        return self

    def set_module_name_qconfig(
        self, module_name: str, quantization_config: Optional[QuantizationConfig]
    ) -> "AnnotatingQuantizer":
        if not isinstance(module_name, str):
            raise TypeError(f"module_name must be a str like 'layer1.0.conv1', got {module_name!r}")
        self._resolver.module_name.pop(module_name, None)
        self._resolver.module_name[module_name] = self._checked(quantization_config)
        return self

    def set_module_type_qconfig(
        self, module_type: type, quantization_config: Optional[QuantizationConfig]
    ) -> "AnnotatingQuantizer":
        if not (isinstance(module_type, type) and issubclass(module_type, torch.nn.Module)):
            raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
        self._resolver.module_type.pop(module_type, None)
        self._resolver.module_type[module_type] = self._checked(quantization_config)
        return self

    def set_function_type_qconfig(
        self, function_type: Callable, quantization_config: Optional[QuantizationConfig]
    ) -> "AnnotatingQuantizer":
        if not callable(function_type):
            raise TypeError(f"function_type must be a callable such as torch.nn.functional.linear, got {function_type!r}")
        self._resolver.function_type.pop(function_type, None)
        self._resolver.function_type[function_type] = self._checked(quantization_config)
        return self

    # upstream / XNNPACK-style spellings
    set_module_name = set_module_name_qconfig
    set_module_type = set_module_type_qconfig
    set_operator_type = set_function_type_qconfig

    def set_object_type(self, object_type: Any, quantization_config: Optional[QuantizationConfig]):
        """`nn.Module` subclass -> module type config; any other callable -> function type."""
        if isinstance(object_type, type) and issubclass(object_type, torch.nn.Module):
            return self.set_module_type_qconfig(object_type, quantization_config)
        return self.set_function_type_qconfig(object_type, quantization_config)

    @property
    def global_config(self) -> Optional[QuantizationConfig]:
        return self._resolver.global_config

    def get_global_quantization_config(self) -> Optional[QuantizationConfig]:
        """The config `set_global` set (upstream's spelling of `global_config`)."""
        return self._resolver.global_config

    def config_for(self, node: Node) -> Optional[QuantizationConfig]:
        """The config the precedence contract gives `node` (None: stays float)."""
        return self._resolver.resolve(node)

    # ---- Quantizer API -----------------------------------------------------------------
    def annotate(self, model: GraphModule) -> GraphModule:
        ctx = AnnotationContext(
            model=model,
            config_for=self._resolver.resolve,
            report=AnnotationReport(),
            unary_post_ops=self.unary_post_ops,
            options=dict(self.options),
        )
        for name in self.annotator_order:
            ANNOTATORS[name](ctx)
        self.last_report = annotation_report(model, ctx.report)
        log.info("%s: %s", type(self).__name__, self.last_report.summary())
        return model

    def validate(self, model: GraphModule) -> None:
        """Every annotated input edge must be an actual input of its node."""
        for node in model.graph.nodes:
            ann = node.meta.get(ANNOTATION_KEY)
            if ann is None:
                continue
            inputs = {a for a in tree_flatten((node.args, node.kwargs))[0] if isinstance(a, Node)}
            stray = [str(a) for a in ann.input_qspec_map if a not in inputs]
            if stray:
                raise ValueError(f"{type(self).__name__}: node {node.name} has input specs for {stray}, which it does not consume")
