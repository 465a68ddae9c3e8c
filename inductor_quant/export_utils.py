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

import torch
from torch.fx import GraphModule

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

__all__ = ["move_exported_model_to_eval", "move_exported_model_to_train", "allow_train_eval"]


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
