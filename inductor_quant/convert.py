"""convert_pt2e: observers -> the Q/DQ reference representation (docs/ARCHITECTURE.md, "Contracts").

  static activation : x -> quantize_per_tensor(x, s, zp) -> dequantize_per_tensor(...)   (scalars)
  constant (weight) : int8 constant (get_attr) -> dequantize_per_channel / per_tensor
                      (group-wise: the constant is the [out * in / group, group] view, the
                      dequantize per channel of it, then reshape back to [out, in]; a
                      least-squares fit's float zero points are float32 tensors, and the
                      weight is quantized here as round(w / s + zp))
                      (fold_quantize=False keeps fp32 weight -> quantize -> dequantize)
  dynamic           : choose_qparams.tensor -> quantize_per_tensor.tensor -> dequantize_per_tensor.tensor
  per-token dynamic : choose_qparams_per_token -> quantize_per_token -> dequantize_per_token
  float16 spec      : x -> convert_element_type.no_fuse(fp16) -> no_fuse(fp32) (weights: the
                      fp16-weight linear, get_x86_inductor_linear_dynamic_fp16_config)
  other float spec  : observer removed, value passes through
QAT conv+bn subgraphs are folded for real first, so weights are quantized with BN folded in.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from .errors import CalibrationError
from .graph_utils import copy_meta, drop_attrs_if_unused, fetch_attr, layer_name, new_attr
from .observers import (
    MIN_SCALE,
    DerivedQParams,
    channel_axis,
    float_zero_points,
    is_dynamic,
    is_observer,
    group_size,
    is_per_channel,
    per_token,
    qparams_of,
    quant_range,
    saw_data,
    target_dtype,
)
from .qat import fold_qat_conv_bn

qd = torch.ops.quantized_decomposed


def _observer_nodes(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and is_observer(gm.get_submodule(n.target))]


def _layers_of(obs_nodes: list[Node]) -> list[str]:
    """Name the layers an observer serves: its consumers (or the producer if it feeds the output)."""
    names = []
    for n in obs_nodes:
        users = [u for u in n.users if u.op == "call_function"]
        names.append(layer_name(users[0] if users else n.args[0]))
    return names


def _constant_source(gm: GraphModule, node: Node):
    return fetch_attr(gm, node.target) if isinstance(node, Node) and node.op == "get_attr" else None


def check_calibrated(gm: GraphModule, obs_nodes: list[Node]) -> None:
    """Weight observers that never ran observe their constant now; activation ones must have data."""
    missing = []
    for n in obs_nodes:
        mod = gm.get_submodule(n.target)
        if saw_data(mod) or is_dynamic(mod):
            continue
        const = _constant_source(gm, n.args[0])
        if const is not None:
            inner = getattr(mod, "activation_post_process", mod)
            inner(const.detach())  # observing a constant is exact: no calibration needed
        else:
            missing.append(n)
    if missing:
        raise CalibrationError(
            f"{len(missing)} observer(s) saw no data, so their scales are unknown: "
            f"{', '.join(sorted(set(_layers_of(missing))))}. Fix: run calibration on the prepared "
            "model before convert_pt2e (e.g. `for x in data: prepared(x)` under torch.no_grad()); "
            "if these layers are never executed, remove them or skip them in the quantizer config."
        )


def _qparams(gm: GraphModule, obs_nodes: list[Node]) -> dict[str, tuple]:
    """observer name -> (scale, zp); derived specs last, since they read other observers."""
    out: dict[str, tuple] = {}
    mods = {n.target: gm.get_submodule(n.target) for n in obs_nodes}
    order = sorted(mods, key=lambda t: isinstance(mods[t], DerivedQParams))
    for t in order:
        mod = mods[t]
        if is_dynamic(mod) or target_dtype(mod).is_floating_point:
            continue
        layer = _layers_of([n for n in obs_nodes if n.target == t])[0]
        out[t] = qparams_of(mod, layer)
    return out


def _dynamic_eps(mod) -> float:
    """The observer's eps for choose_qparams, never below MIN_SCALE (a negative eps => zero scale)."""
    eps = getattr(getattr(mod, "activation_post_process", mod), "eps", None)
    eps = float(eps) if isinstance(eps, (float, int, torch.Tensor)) and torch.as_tensor(eps).numel() == 1 else 0.0
    return max(eps, MIN_SCALE)


def _replace(gm: GraphModule, obs: Node, qparams, fold_quantize: bool) -> None:
    mod = gm.get_submodule(obs.target)
    x = obs.args[0]
    g = gm.graph
    dtype = target_dtype(mod)
    if dtype == torch.float16:  # rounded through fp16 where it is read, as upstream's reference model
        with g.inserting_before(obs):
            half = g.call_function(qd.convert_element_type.no_fuse, (x, torch.float16))
            dq = g.call_function(qd.convert_element_type.no_fuse, (half, torch.float32))
        for n in (half, dq):
            copy_meta(n, obs)
        obs.replace_all_uses_with(dq)
        g.erase_node(obs)
        return
    if dtype.is_floating_point:
        obs.replace_all_uses_with(x)
        g.erase_node(obs)
        return
    qmin, qmax = quant_range(mod)
    with g.inserting_before(obs):
        if per_token(mod):  # symmetric int8 per row of the last dimension, chosen at run time
            cq = g.call_function(qd.choose_qparams_per_token.default, (x, dtype))
            s, zp = (g.call_function(operator.getitem, (cq, i)) for i in (0, 1))
            q = g.call_function(qd.quantize_per_token.default, (x, s, zp, qmin, qmax, dtype))
            dq = g.call_function(qd.dequantize_per_token.default, (q, s, zp, qmin, qmax, dtype, torch.float32))
            new = [cq, s, zp, q, dq]
        elif is_dynamic(mod):
            eps = _dynamic_eps(mod)
            cq = g.call_function(qd.choose_qparams.tensor, (x, qmin, qmax, eps, dtype))
            s, zp = (g.call_function(operator.getitem, (cq, i)) for i in (0, 1))
            q = g.call_function(qd.quantize_per_tensor.tensor, (x, s, zp, qmin, qmax, dtype))
            dq = g.call_function(qd.dequantize_per_tensor.tensor, (q, s, zp, qmin, qmax, dtype))
            new = [cq, s, zp, q, dq]
        else:
            scale, zp = qparams[obs.target]
            const = _constant_source(gm, x)
            per_channel = is_per_channel(mod) or scale.numel() > 1
            if per_channel:
                axis = channel_axis(mod)
                base = x.target if const is not None else obs.name
                s_node = g.get_attr(new_attr(gm, f"{base}_scale", scale))
                z_node = g.get_attr(new_attr(gm, f"{base}_zero_point", zp))
                qargs = (s_node, z_node, axis, qmin, qmax, dtype)
                q_op, dq_op = qd.quantize_per_channel.default, qd.dequantize_per_channel.default
                new = [s_node, z_node]
            else:
                qargs = (float(scale.item()), int(zp.item()), qmin, qmax, dtype)
                q_op, dq_op = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
                new = []
            group = group_size(mod)
            if const is not None and fold_quantize:
                grouped = const.detach() if group is None else const.detach().reshape(-1, group)
                values = [fetch_attr(gm, a.target) if isinstance(a, Node) else a for a in qargs]
                qval = (_quantize_float_zero_points(grouped, *values) if float_zero_points(mod)
                        else q_op(grouped, *values))
                q = g.get_attr(new_attr(gm, f"{x.target}_quantized", qval))
                q.meta["val"] = qval
            elif group is None:
                q = g.call_function(q_op, (x,) + qargs)
            else:  # group-wise: per channel over the [out * in / group, group] view
                grouped = g.call_function(torch.ops.aten.reshape.default, (x, [-1, group]))
                q = g.call_function(q_op, (grouped,) + qargs)
                new.append(grouped)
            dq = g.call_function(dq_op, (q,) + qargs)
            new += [q, dq]
            if group is not None:  # back to the weight's [out, in]
                new.append(dq)
                shape = const.shape if const is not None else x.meta["val"].shape
                dq = g.call_function(torch.ops.aten.reshape.default, (dq, list(shape)))
    for n in new:
        copy_meta(n, obs)
    if "val" in obs.meta:
        dq.meta["val"] = obs.meta["val"]
    obs.replace_all_uses_with(dq)
    g.erase_node(obs)


def _quantize_float_zero_points(w, scale, zero_point, axis, qmin, qmax, dtype):
    """round(w / scale + zero_point) per channel of axis 0: quantize_per_channel rounds before it
    adds the zero point, which is exact only for integer zero points."""
    assert axis == 0, "float zero points come from group-wise weight observers (axis 0)"
    shape = [-1] + [1] * (w.dim() - 1)
    return torch.clamp(torch.round(w / scale.view(shape) + zero_point.view(shape)), qmin, qmax).to(dtype)


def _check_float_zero_points_fold(gm: GraphModule, obs_nodes: list[Node], fold_quantize: bool) -> None:
    """A float zero point quantizes the weight once, at convert (the graph's quantize op rounds
    before adding a zero point): it needs the weight as a constant and fold_quantize=True."""
    for n in obs_nodes:
        if float_zero_points(gm.get_submodule(n.target)) and (not fold_quantize or _constant_source(gm, n.args[0]) is None):
            raise ValueError(
                f"{_layers_of([n])[0]}: a weight config with float zero points (zero_point_domain=\"float\") "
                "quantizes the weight at convert time, so it needs convert_pt2e(..., fold_quantize=True) and a "
                "weight that is a constant of the model. Fix: convert with fold_quantize=True, or use "
                "zero_point_domain=\"int\" for this layer.")


def convert_observed(gm: GraphModule, fold_quantize: bool) -> GraphModule:
    check_calibrated(gm, _observer_nodes(gm))  # before any rewrite: a failed convert changes nothing
    _check_float_zero_points_fold(gm, _observer_nodes(gm), fold_quantize)
    fold_qat_conv_bn(gm)
    obs_nodes = _observer_nodes(gm)
    qparams = _qparams(gm, obs_nodes)
    names = {n.target for n in obs_nodes}
    for n in obs_nodes:
        _replace(gm, n, qparams, fold_quantize)
    for name in names:
        delattr(gm, name)
    if fold_quantize:
        _drop_unread_constants(gm)
    _drop_dtype_assertions(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _drop_dtype_assertions(gm: GraphModule) -> None:
    """torch.export records what it saw before each `.float()` / `.to(dtype)` as an assertion
    (`aten._assert_tensor_metadata`). Under bf16 autocast around the converted model
    (int8-mixed-bf16) a linear's output is bf16 and the assertion would refuse the run, eager or
    compiled; the conversion after it is what the model asked for, so the assertions go."""
    for n in list(gm.graph.find_nodes(op="call_function", target=torch.ops.aten._assert_tensor_metadata.default)):
        if not n.users:
            gm.graph.erase_node(n)


def _drop_unread_constants(gm: GraphModule) -> None:
    """fp32 weights whose every reader became an int8 constant are dead: drop the get_attr."""
    dead = [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]
    targets = [n.target for n in dead]
    for n in dead:
        gm.graph.erase_node(n)
    drop_attrs_if_unused(gm, targets)
