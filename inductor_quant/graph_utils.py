"""Small FX helpers shared by prepare, convert and the BN folding passes."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

CONV_OPS = (
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,  # padding="same"/"valid"
)
CONV_TRANSPOSE_OPS = (aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
BATCH_NORM_OPS = (aten.batch_norm.default,)

# Meta keys copied onto nodes we create, so later tools can map them back to layers.
_KEPT_META = ("nn_module_stack", "stack_trace", "from_node", "source_fn_stack")


def copy_meta(dst: Node, src: Node) -> None:
    for k in _KEPT_META:
        if k in src.meta:
            dst.meta[k] = src.meta[k]


def fetch_attr(gm: GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def new_attr(gm: GraphModule, base: str, value: torch.Tensor, param: bool = False) -> str:
    """Register a fresh top-level buffer/parameter named after `base`; returns its name."""
    name, i = base.replace(".", "_"), 0
    while hasattr(gm, name):
        i += 1
        name = f"{base.replace('.', '_')}_{i}"
    if param:
        gm.register_parameter(name, torch.nn.Parameter(value.detach().clone()))
    else:
        gm.register_buffer(name, value.detach().clone())
    return name


def layer_name(node: Node) -> str:
    """Human name for a node: the innermost nn.Module path plus the node name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return f"'{path}' (node {node.name})"
    return f"node {node.name}"


def erase_dead(gm: GraphModule, nodes: Iterable[Node]) -> None:
    """Erase the given nodes, and then their inputs, once they have no users (never placeholders)."""
    pending = list(nodes)
    changed = True
    while changed:
        changed = False
        for n in list(pending):
            if n.graph is gm.graph and not n.users:
                inputs = [a for a in n.all_input_nodes if a.op != "placeholder"]
                gm.graph.erase_node(n)
                pending.remove(n)
                pending.extend(a for a in inputs if a not in pending)
                changed = True


def drop_attrs_if_unused(gm: GraphModule, targets: Iterable[str]) -> None:
    """Delete the given tensors if no get_attr reads them any more (old weights after folding)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in set(targets) - used:
        owner_path, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, attr):
            delattr(owner, attr)


def rekey_annotations(gm: GraphModule, old: Node, new: Node, consumer: Node | None = None) -> None:
    """After replacing node `old` by `new`: every annotation that names `old` (an input_qspec_map
    key, a SharedQuantizationSpec target, a DerivedQuantizationSpec source, as a node or in an
    edge) names `new` instead. With `consumer`, only the edge (old, consumer) is renamed."""
    import dataclasses

    from .quantizer.quantizer import ANNOTATION_KEY, DerivedQuantizationSpec, SharedQuantizationSpec

    def sub(ref):
        if isinstance(ref, tuple):
            return (new, ref[1]) if ref[0] is old and consumer in (None, ref[1]) else ref
        return new if ref is old and consumer is None else ref

    def fix(spec):
        if isinstance(spec, SharedQuantizationSpec):
            return dataclasses.replace(spec, edge_or_node=sub(spec.edge_or_node))
        if isinstance(spec, DerivedQuantizationSpec):
            return dataclasses.replace(spec, derived_from=[sub(r) for r in spec.derived_from])
        return spec

    for n in gm.graph.nodes:
        ann = n.meta.get(ANNOTATION_KEY)
        if ann is not None:
            rename = consumer in (None, n)
            ann.input_qspec_map = {(new if k is old and rename else k): fix(v) for k, v in ann.input_qspec_map.items()}
            ann.output_qspec = fix(ann.output_qspec)
