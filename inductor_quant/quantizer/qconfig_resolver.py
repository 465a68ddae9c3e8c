"""Which QuantizationConfig applies to a node: the precedence contract, in one place."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Union

import torch
from torch.fx import Node

from .aten_ops import FUNCTION_TO_ATEN
from .quantizer import QuantizationConfig

__all__ = ["QConfigResolver"]

_UNSET = object()


def _type_name(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def _locate(type_name: str) -> Optional[type]:
    """The class named by an `nn_module_stack` type string, if importable (not `<locals>`)."""
    if "<locals>" in type_name:
        return None
    parts = type_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - any import failure just means "unknown"
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj if isinstance(obj, type) else None
    return None


class QConfigResolver:
    """Maps a graph node to the QuantizationConfig that applies to it.

    Precedence — the ONE place it is written down — highest first:

    1. **module name** (`set_module_name_qconfig` / `set_module_name`): the node was traced
       inside the submodule with that qualified name ("layer1.0.conv1"), at any depth of its
       `nn_module_stack`. When several configured names enclose the node, the longest (most
       specific) name wins.
    2. **module type** (`set_module_type_qconfig` / `set_object_type(nn.Module subclass)`):
       some enclosing module is of that type or a subclass of it (importable classes; local
       classes match by exact qualified name). The innermost enclosing match wins.
    3. **function type** (`set_function_type_qconfig` / `set_object_type(callable)`): the
       node's ATen op is what the callable lowers to (`F.linear` -> `aten.linear`, also for
       `nn.Linear`, which calls it), or the callable is an ATen op/overload packet itself.
    4. **global** (`set_global`).

    A config of `None` at any level is a decision, not a miss: the node is left float and
    lower levels are not consulted. For a fused chain (conv -> bn -> relu, linear -> add ->
    relu, ...) the *anchor* (the conv / linear / matmul node) decides for the whole chain;
    a propagated op (pool, cat, view, ...) follows its own lookup.

    Static and dynamic configs may be mixed freely; a dynamic config only applies to
    linear (and opt-in matmul) anchors, everything else under it stays float.
    """

    def __init__(self) -> None:
        self.global_config: Optional[QuantizationConfig] = None
        self.module_name: dict[str, Optional[QuantizationConfig]] = {}
        self.module_type: dict[type, Optional[QuantizationConfig]] = {}
        self.function_type: dict[Any, Optional[QuantizationConfig]] = {}
        self._located: dict[str, Optional[type]] = {}

    # ---- lookup -----------------------------------------------------------------------
    def resolve(self, node: Node) -> Optional[QuantizationConfig]:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        for lookup in (self._by_module_name, self._by_module_type, self._by_function):
            found = lookup(node, stack)
            if found is not _UNSET:
                return found
        return self.global_config

    def _by_module_name(self, node: Node, stack: list) -> Any:
        paths = {str(path) for path, _ in stack}
        for name in sorted(self.module_name, key=len, reverse=True):
            if name in paths:
                return self.module_name[name]
        return _UNSET

    def _by_module_type(self, node: Node, stack: list) -> Any:
        if not self.module_type:
            return _UNSET
        for _, tp in reversed(stack):
            for configured, config in self.module_type.items():
                if self._type_matches(tp, configured):
                    return config
        return _UNSET

    def _type_matches(self, stack_type: Union[str, type], configured: type) -> bool:
        if isinstance(stack_type, type):
            return issubclass(stack_type, configured)
        name = str(stack_type)
        if name == _type_name(configured):
            return True
        if name not in self._located:
            self._located[name] = _locate(name)
        cls = self._located[name]
        return cls is not None and issubclass(cls, configured)

    def _by_function(self, node: Node, stack: list) -> Any:
        if not self.function_type or node.op != "call_function":
            return _UNSET
        torch_fn = node.meta.get("torch_fn")
        fn_name = torch_fn[1].rsplit(".", 1)[-1] if torch_fn else None
        for fn, config in self.function_type.items():
            if node.target in _aten_targets(fn):
                return config
            if fn_name is not None and getattr(fn, "__name__", None) == fn_name and fn not in FUNCTION_TO_ATEN:
                return config
        return _UNSET


def _aten_targets(fn: Callable) -> frozenset:
    if fn in FUNCTION_TO_ATEN:
        return FUNCTION_TO_ATEN[fn]
    if isinstance(fn, torch._ops.OpOverload):
        return frozenset({fn})
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return frozenset(getattr(fn, o) for o in fn.overloads())
    return frozenset()
