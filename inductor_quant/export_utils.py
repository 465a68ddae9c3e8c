"""move_exported_model_to_eval / _train: `model.eval()` does not change an exported graph.

Dropout and batch norm carry their `training` flag as a graph argument, so we rewrite it:
  aten.dropout / feature_dropout / alpha_dropout (x, p, train)         -> arg 2
  aten.batch_norm (x, w, b, mean, var, training, momentum, eps, cudnn) -> arg 5
  aten._native_batch_norm_legit / cudnn_batch_norm (..., training, ...)-> arg 5
(`_native_batch_norm_legit_no_training` has no flag: it is already eval-only.)
prepare_* and convert_pt2e also route the model's own .train()/.eval() here (allow_train_eval).
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Optional, Union

import torch
from torch.fx import GraphModule
from torch.utils._sympy.value_ranges import bound_sympy

from .errors import InputMismatchError

aten = torch.ops.aten

# op -> index of its `training` argument
_TRAINING_ARG = {
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
    aten.feature_alpha_dropout.default: 2,
    aten.batch_norm.default: 5,
    aten._native_batch_norm_legit.default: 5,
    aten.cudnn_batch_norm.default: 5,
}

__all__ = [
    "move_exported_model_to_eval", "move_exported_model_to_train", "allow_train_eval",
    "InputCheck", "PreparedCompileWarning",
]


def _set_training(model: GraphModule, training: bool) -> GraphModule:
    if not isinstance(model, GraphModule):
        raise TypeError(
            f"expected an exported GraphModule, got {type(model).__name__}; for an eager "
            f"nn.Module use model.{'train' if training else 'eval'}() instead"
        )
    changed = False
    for node in model.graph.nodes:
        idx = _TRAINING_ARG.get(node.target) if node.op == "call_function" else None
        if idx is None or len(node.args) <= idx or node.args[idx] == training:
            continue
        args = list(node.args)
        args[idx] = training
        node.args = tuple(args)
        changed = True
    if changed:
        model.recompile()
    # exported modules may forbid .train()/.eval(); set the submodule flags the plain way
    torch.nn.Module.train(model, training)
    return model


def move_exported_model_to_eval(model: GraphModule) -> GraphModule:
    """Dropout off, batch norm uses running stats. Returns the same model."""
    return _set_training(model, False)


def move_exported_model_to_train(model: GraphModule) -> GraphModule:
    """Dropout on, batch norm uses batch stats and updates running stats. Returns the same model."""
    return _set_training(model, True)


def _train_method(self: GraphModule, mode: bool = True) -> GraphModule:
    return _set_training(self, mode)


def _eval_method(self: GraphModule) -> GraphModule:
    return _set_training(self, False)


def allow_train_eval(model: GraphModule) -> GraphModule:
    """Make `model.train()` / `model.eval()` work on an exported model (torch's raise
    NotImplementedError) by routing them to move_exported_model_to_train / _eval. The PTQ
    tutorial's `calibrate()` calls `model.eval()` on the prepared model."""
    model.train = types.MethodType(_train_method, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_eval_method, model)  # type: ignore[method-assign]
    return model


# ---------------------------------------------------------------------------------------------
# Input checks of prepared / converted models
# ---------------------------------------------------------------------------------------------
# The exported module guards its inputs itself, but its failures read "Guard failed:
# x.size()[0] == 2" (eager) or a Dynamo TorchRuntimeError around the same text (compiled), and
# it checks neither dtype nor device (float64 data fails deep inside a matmul). This pre-hook runs
# first and names the input, what the export expects and the fix. It is plain Python over
# shapes, so Dynamo traces it (no graph break) and it costs nothing in a compiled model.

_HALF_OR_FLOAT = (torch.float32, torch.bfloat16, torch.float16)
_DYNAMIC_FIX = (
    "export with a dynamic dimension, e.g. torch.export.export(model, args, "
    "dynamic_shapes={{'{name}': {{{dim}: torch.export.Dim('d{dim}', min=1, max=1024)}}}}), "
    "then prepare/calibrate/convert again (a calibrated state_dict loads into the new prepared model)"
)


def _dim_spec(size: Any, user_ranges: Optional[dict] = None) -> Union[int, tuple]:
    """An int for a static dim, (min, max or None) for a symbolic one.

    The bounds come from `user_ranges` (the module's `range_constraints`: the Dim(min, max) the
    user exported, which the exported module itself accepts) before the placeholders' shape env:
    that one narrows a lower bound of 0 or 1 to 2 for tracing (sizes 0 and 1 are specialized), so
    reading it alone refused batch 1 from a model exported with Dim(min=1)."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    node = size.node
    user_ranges = user_ranges or {}
    try:
        vr = user_ranges.get(node.expr)
        if vr is None:  # an expression of exported dims: bound it with the user's ranges first
            ranges = dict(node.shape_env.var_to_range) if node.shape_env is not None else {}
            ranges.update({k: v for k, v in user_ranges.items() if getattr(k, "is_Symbol", False)})
            vr = bound_sympy(node.expr, ranges)
    except Exception:  # no shape env or an odd expression: accept anything
        return (0, None)

    def as_int(v: Any) -> Optional[int]:
        try:
            return int(v)
        except Exception:  # sympy oo / int_oo: unbounded
            return None

    return (as_int(vr.lower) or 0, as_int(vr.upper))


def _range_constraints(gm: torch.nn.Module) -> dict:
    """The user's exported ranges, as torch.export records them on `ExportedProgram.module()`."""
    ranges = getattr(gm, "range_constraints", None)
    return dict(ranges) if isinstance(ranges, dict) else {}


class InputCheck:
    """Forward pre-hook: inputs must have the exported rank, static sizes, dynamic ranges, dtype
    family and device; otherwise InputMismatchError naming the input and the fix.

    Under Dynamo the stored sizes may be traced as SymInts, and str() of a SymInt does not trace;
    so every message is made of text prepared at attach time (plus the actual shape only when
    running eagerly)."""

    def __init__(self, specs: list[tuple]):
        self.specs = specs  # (name, dtype, device, [int | (lo, hi|None)], [text per dim], shape text)

    @staticmethod
    def attach(gm: GraphModule, range_constraints: Optional[dict] = None) -> None:
        """`range_constraints` defaults to the ones recorded on `gm` (pass the exported module's
        when a quantizer's transform returned a new GraphModule without them)."""
        user_ranges = _range_constraints(gm) if range_constraints is None else dict(range_constraints)
        specs = []
        for node in gm.graph.nodes:
            if node.op != "placeholder":
                continue
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                specs.append((node.name, None, None, None, None, None))
                continue
            dims = [_dim_spec(s, user_ranges) for s in val.shape]
            texts = [str(d) if isinstance(d, int) else f"[{d[0]}, {'inf' if d[1] is None else d[1]}]" for d in dims]
            shape = "(" + ", ".join(t if isinstance(d, int) else f"{d[0]}..{'inf' if d[1] is None else d[1]}"
                                    for d, t in zip(dims, texts)) + ")"
            specs.append((node.name, val.dtype, val.device, dims, texts, shape))
        if not any(s[1] is not None for s in specs):
            return
        gm.register_forward_pre_hook(InputCheck(specs), prepend=True, with_kwargs=True)

    def __call__(self, mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs or len(args) != len(self.specs):
            return  # let the exported module's own argument handling report it
        for x, spec in zip(args, self.specs):
            if spec[1] is not None and isinstance(x, torch.Tensor):
                self._check(x, *spec)

    @staticmethod
    def _check(x: torch.Tensor, name: str, dtype, device, dims: list, texts: list, shape: str) -> None:
        if x.device != device:
            raise InputMismatchError(
                f"input '{name}' is on device {x.device}, but the model was exported and quantized on "
                f"{device} (its weights live there). Fix: pass {device} tensors, e.g. {name}.to('{device}'); "
                "the int8 oneDNN kernels run on CPU."
            )
        if x.dtype != dtype and not (x.dtype in _HALF_OR_FLOAT and dtype in _HALF_OR_FLOAT):
            raise InputMismatchError(
                f"input '{name}' is {x.dtype}, but the model was exported with {dtype}. Fix: "
                f"{name}.to({dtype}) (for bf16 compute keep float32 inputs and use torch.autocast)."
            )
        if x.dim() != len(dims):
            raise InputMismatchError(
                f"input '{name}' has shape {_actual(x)} ({x.dim()}-D), but the model was exported for "
                f"{len(dims)}-D inputs of shape {shape}. Fix: pass inputs shaped like the export's "
                "example inputs."
            )
        for i, (size, want) in enumerate(zip(x.shape, dims)):
            if isinstance(want, int):
                if size != want:
                    raise InputMismatchError(
                        f"input '{name}' has shape {_actual(x)}, but the model was exported for shape "
                        f"{shape}: dim {i} is static ({texts[i]}). Fix: use inputs of the exported shape "
                        "(for calibration too), or " + _DYNAMIC_FIX.format(name=name, dim=i) + "."
                    )
            elif size < want[0] or (want[1] is not None and size > want[1]):
                raise InputMismatchError(
                    f"input '{name}' has shape {_actual(x)}: dim {i} is outside the dynamic range "
                    f"{texts[i]} it was exported with (shape {shape}). Fix: keep inputs inside the "
                    "range, or re-export with a wider torch.export.Dim(min=..., max=...) and "
                    "prepare/calibrate/convert again (a calibrated state_dict loads into the new "
                    "prepared model)."
                )


def _actual(x: torch.Tensor) -> str:
    if torch.compiler.is_compiling():
        return "unlike the export"  # sizes are symbolic while tracing
    return str(tuple(x.shape))


class PreparedCompileWarning:
    """Forward pre-hook of prepared (observed) models: torch.compile of one warns once that it
    runs in float with observers (a correct fp32 result, no int8) and how to get the int8 model.
    Removed by convert_pt2e."""

    MESSAGE = (
        "inductor_quant: torch.compile of a *prepared* model: it runs in float32 with observers "
        "(calibration), not int8. Fix: calibrate, then compile convert_pt2e(prepared) instead."
    )

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, mod: torch.nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling() and not self.warned:
            self.warned = True
            warnings.warn(self.MESSAGE, UserWarning, stacklevel=2)

    @staticmethod
    def attach(gm: GraphModule) -> None:
        gm.register_forward_pre_hook(PreparedCompileWarning())

    @staticmethod
    def detach(gm: GraphModule) -> None:
        for key, hook in list(gm._forward_pre_hooks.items()):
            if isinstance(hook, PreparedCompileWarning):
                del gm._forward_pre_hooks[key]
