"""Observer insertion: turn the quantizer's annotations into observer submodules.

Every annotated edge (producer, consumer) and node output is a *key*. Keys that must share
qparams are merged with union-find; each group gets ONE observer instance, registered as
`activation_post_process_<i>` on the GraphModule (so `model.apply(disable_observer)` and
`state_dict()` see it). Groups are merged when
  * a `SharedQuantizationSpec` points at another key (transitive by construction), or
  * implicitly: a consumer edge whose spec equals the producer's output spec reuses the
    producer's output observer (no double observation), unless the producer's annotation
    says `allow_implicit_sharing=False`, or
  * sibling edges from one producer carry equal specs (one observer, one q/dq for all).
Observers are never chained on one value unless the specs differ (e.g. int8 conv output
feeding a sigmoid with fixed uint8 qparams).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from .errors import AnnotationError, UnsupportedModelError
from .graph_utils import copy_meta, layer_name
from .observers import DerivedQParams, FiniteInputCheck, make_observer
from .quantizer.quantizer import (
    ANNOTATION_KEY,
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    SharedQuantizationSpec,
)

OBSERVER_PREFIX = "activation_post_process_"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, k: Any) -> Any:
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def _describe(key: Any) -> str:
    if isinstance(key, tuple):
        return f"edge {key[0].name} -> {key[1].name}"
    return f"output of {key.name}"


def collect_specs(gm: GraphModule) -> dict[Any, Any]:
    """key -> spec for every annotated edge and node, after checking each key is real."""
    in_graph = set(gm.graph.nodes)
    specs: dict[Any, Any] = {}
    for node in gm.graph.nodes:
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None:
            continue
        for arg, spec in ann.input_qspec_map.items():
            if spec is None:
                continue
            if not isinstance(arg, Node) or arg not in in_graph or arg not in node.all_input_nodes:
                name = arg.name if isinstance(arg, Node) else repr(arg)
                raise AnnotationError(
                    f"the annotation of node '{node.name}' ({node.target}) has an input spec for "
                    f"'{name}', which is {'not in the graph' if arg not in in_graph else 'not an input of it'}. "
                    f"Fix the quantizer: key input_qspec_map by nodes from {node.name}.args "
                    f"(inputs: {[a.name for a in node.all_input_nodes]})."
                )
            specs[(arg, node)] = spec
        if ann.output_qspec is not None:
            specs[node] = ann.output_qspec
    for key, spec in specs.items():
        refs = []
        if isinstance(spec, SharedQuantizationSpec):
            refs = [spec.edge_or_node]
        elif isinstance(spec, DerivedQuantizationSpec):
            refs = list(spec.derived_from)
        for ref in refs:
            if ref not in specs:
                raise AnnotationError(
                    f"{type(spec).__name__} on {_describe(key)} refers to {_describe_ref(ref, in_graph)}, "
                    "which has no quantization spec. Fix the quantizer: annotate that edge/node "
                    "first, or refer to an annotated one (an edge is (producer, consumer))."
                )
    return specs


def _describe_ref(ref: Any, in_graph: set) -> str:
    nodes = ref if isinstance(ref, tuple) else (ref,)
    missing = [n for n in nodes if not isinstance(n, Node) or n not in in_graph]
    text = _describe(ref) if not missing else repr(ref)
    return text + (f" (node(s) {[getattr(n, 'name', n) for n in missing]} not in the graph)" if missing else "")


# What quantize_per_tensor/per_channel accept (bf16/fp16 are cast to float32 first).
QUANTIZABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtypes(specs: dict[Any, Any]) -> None:
    """Every value an integer spec would quantize must be float32 (or bf16/fp16): a float64 model
    would otherwise fail at convert with "Expecting input to have dtype torch.float32"."""
    bad: dict[str, torch.dtype] = {}
    for key, spec in specs.items():
        dtype = getattr(spec, "dtype", None)
        if dtype is None or dtype.is_floating_point:
            continue
        node = key[0] if isinstance(key, tuple) else key
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype not in QUANTIZABLE_DTYPES:
            bad.setdefault(layer_name(key[1] if isinstance(key, tuple) else key), val.dtype)
    if bad:
        dtypes = sorted({str(d) for d in bad.values()})
        raise UnsupportedModelError(
            f"the quantizer annotated {len(bad)} layer(s) computing in {', '.join(dtypes)}: "
            f"{', '.join(sorted(bad))}. int8 quantization starts from float32 values. Fix: "
            "model = model.float() and export with float32 example inputs (for bf16 compute, keep "
            "the model float32 and compile under torch.autocast('cpu', dtype=torch.bfloat16))."
        )


def _shareable(spec: Any) -> bool:
    return isinstance(spec, (QuantizationSpec, FixedQParamsQuantizationSpec))


def group_keys(specs: dict[Any, Any]) -> tuple[_UnionFind, dict[Any, Any]]:
    """Union-find over keys; returns it and root -> the group's concrete (non-shared) spec."""
    uf = _UnionFind()
    for key, spec in specs.items():
        uf.find(key)
        if isinstance(spec, SharedQuantizationSpec):
            uf.union(key, spec.edge_or_node)
    concrete: dict[Any, Any] = {}
    for key, spec in specs.items():  # first concrete spec of a group wins, as upstream
        if not isinstance(spec, SharedQuantizationSpec):
            concrete.setdefault(uf.find(key), spec)

    def merge(a: Any, b: Any) -> None:
        spec = concrete.get(uf.find(a))
        uf.union(a, b)
        concrete[uf.find(a)] = spec

    first_sibling: dict[tuple, Any] = {}
    for key in specs:
        if not isinstance(key, tuple):
            continue
        producer, spec = key[0], concrete.get(uf.find(key))
        if not _shareable(spec):
            continue
        # implicit sharing: the consumer reads the producer's output observer
        ann = producer.meta.get(ANNOTATION_KEY)
        if producer in specs and (ann is None or ann.allow_implicit_sharing) and not spec.is_dynamic:
            if concrete.get(uf.find(producer)) == spec:
                merge(key, producer)
                continue
        # sibling edges from one producer with equal specs: one observer, one q/dq
        sibling = first_sibling.setdefault((producer, spec), key)
        if sibling is not key:
            merge(key, sibling)
    return uf, {uf.find(k): concrete.get(uf.find(k)) for k in specs}


def insert_observers(gm: GraphModule, is_qat: bool) -> dict[Any, Any]:
    """Insert one call_module per observed edge/output; returns key -> observer instance."""
    specs = collect_specs(gm)
    check_dtypes(specs)
    uf, group_spec = group_keys(specs)
    observers: dict[Any, Any] = {}
    names: dict[Any, str] = {}
    for root, spec in group_spec.items():
        if spec is None:
            raise AnnotationError(f"{_describe(root)} only shares qparams, no edge/node in its group has a real spec")
        if not isinstance(spec, DerivedQuantizationSpec):
            observers[root] = make_observer(spec, is_qat)
    for root, spec in group_spec.items():
        if isinstance(spec, DerivedQuantizationSpec):
            observers[root] = DerivedQParams(spec, [observers[uf.find(k)] for k in spec.derived_from])

    def module_name(key: Any) -> str:
        root = uf.find(key)
        if root not in names:
            names[root] = f"{OBSERVER_PREFIX}{len(names)}"
            gm.add_submodule(names[root], observers[root])
            FiniteInputCheck.attach(observers[root], layer_name(key[1] if isinstance(key, tuple) else key))
        return names[root]

    def add_obs(src: Node, key: Any, meta_from: Node) -> Node:
        obs = gm.graph.call_module(module_name(key), (src,))
        copy_meta(obs, meta_from)
        if "val" in src.meta:
            obs.meta["val"] = src.meta["val"]
        return obs

    current: dict[Node, Node] = {}  # node -> its output observer (what consumers now read)
    edge_obs: dict[tuple, Node] = {}  # (group, source) -> observer node already in the graph
    for node in list(gm.graph.nodes):
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None:
            continue
        for arg, spec in ann.input_qspec_map.items():
            key = (arg, node)
            if spec is None or (arg in current and uf.find(arg) == uf.find(key)):
                continue  # consumer already reads the producer's (shared) observer
            src = current.get(arg, arg)
            obs = edge_obs.get((uf.find(key), src))
            if obs is None:  # first consumer in graph order: later ones reuse this node
                with gm.graph.inserting_before(node):
                    obs = edge_obs[(uf.find(key), src)] = add_obs(src, key, node)
            node.replace_input_with(src, obs)
        if ann.output_qspec is not None:
            after = node if node.op != "placeholder" else _last_placeholder(gm)
            with gm.graph.inserting_after(after):
                obs = add_obs(node, node, node)
            node.replace_all_uses_with(obs, delete_user_cb=lambda user: user is not obs)
            current[node] = obs
    gm.graph.lint()
    gm.recompile()
    return {k: observers[uf.find(k)] for k in specs}


def _last_placeholder(gm: GraphModule) -> Node:
    return [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
