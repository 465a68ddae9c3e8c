"""Numeric debugger: which layer of an int8 model drifted from the float model, and how far.

    report = compare(float_model, converted, inputs)          # eager converted model
    print(report.table(10)); report.plot("numerics.png"); report.to_json()
    report = compare(float_model, converted, inputs, compiled_model=torch.compile(converted))

Layers are the conv/linear nodes of both graphs, matched by module path (`nn_module_stack`)
plus call index, so `layer.name` is what `set_module_name_qconfig` takes. The float side is
the float model exported on the same inputs with BN folded into its convs (as prepare_pt2e
does), so a conv's output means the same thing in both graphs. Per quantized layer:

  act_*    float model vs quantized model at the layer output: the error the user sees,
           accumulated over every quantized layer before it;
  local_*  the layer alone: its int8 path (input q/dq, int8 weight) fed the *float* input,
           vs the float layer -- what this layer adds, so it names the culprit;
  weight_* float (BN-folded) weight vs the dequantized int8 weight.

SQNR = 10·log10(Σref² / Σ(ref-out)²) in dB, capped to ±SQNR_CAP so JSON stays finite;
cosine over the flattened tensor. With several batches the sums run over all of them.
Ranking (`worst`) is by local SQNR: cumulative numbers blame every layer after the culprit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg
from torch.utils._pytree import tree_flatten

from .bn_folding import fold_bn_into_conv
from .export_utils import move_exported_model_to_eval
from .graph_utils import CONV_OPS, fetch_attr

__all__ = ["Agreement", "LayerNumerics", "NumericReport", "compare"]

SQNR_CAP = 200.0  # dB; an exact match reports +SQNR_CAP
LAYER_OPS = frozenset(CONV_OPS) | {torch.ops.aten.linear.default}

_qd = torch.ops.quantized_decomposed
_QDQ_OPS = frozenset({
    _qd.quantize_per_tensor.default, _qd.quantize_per_tensor.tensor,
    _qd.dequantize_per_tensor.default, _qd.dequantize_per_tensor.tensor,
    _qd.quantize_per_channel.default, _qd.dequantize_per_channel.default,
    _qd.choose_qparams.tensor, operator.getitem,
})
_DQ_OPS = frozenset({_qd.dequantize_per_tensor.default, _qd.dequantize_per_tensor.tensor, _qd.dequantize_per_channel.default})


# ----------------------------------------------------------------------------- statistics
@dataclass
class Agreement:
    """Running sums comparing `out` with a reference `ref`; add() batches, read sqnr/cosine."""

    signal: float = 0.0  # Σ ref²
    noise: float = 0.0  # Σ (ref - out)²
    dot: float = 0.0  # Σ ref·out
    out_sq: float = 0.0  # Σ out²
    max_abs: float = 0.0  # max |ref - out|

    def add(self, ref: torch.Tensor, out: torch.Tensor) -> "Agreement":
        ref, out = ref.detach().double().flatten(), out.detach().double().flatten()
        diff = ref - out
        self.signal += float(ref.dot(ref))
        self.noise += float(diff.dot(diff))
        self.dot += float(ref.dot(out))
        self.out_sq += float(out.dot(out))
        self.max_abs = max(self.max_abs, float(diff.abs().max())) if diff.numel() else self.max_abs
        return self

    @property
    def sqnr(self) -> float:
        if self.noise == 0.0:
            return SQNR_CAP
        if self.signal == 0.0:
            return -SQNR_CAP
        return max(-SQNR_CAP, min(SQNR_CAP, 10.0 * math.log10(self.signal / self.noise)))

    @property
    def cosine(self) -> float:
        if self.signal == 0.0 and self.out_sq == 0.0:
            return 1.0
        if self.signal == 0.0 or self.out_sq == 0.0:
            return 0.0
        return self.dot / math.sqrt(self.signal * self.out_sq)

    def as_dict(self) -> dict:
        return {"sqnr": self.sqnr, "cosine": self.cosine, "max_abs": self.max_abs}


def _flat_output(out: Any) -> torch.Tensor:
    leaves = [t.detach().float().flatten() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return torch.cat(leaves) if leaves else torch.zeros(0)


# ----------------------------------------------------------------------------- report
@dataclass
class LayerNumerics:
    """One quantized conv/linear. `name` is its module path (+ '#k' for the k-th extra call)."""

    name: str
    module: str  # the path to pass to set_module_name_qconfig
    node: str  # node name in the converted graph
    op: str  # 'conv2d', 'linear', ...
    act_sqnr: float
    act_cosine: float
    act_max_abs: float
    local_sqnr: float
    local_cosine: float
    weight_sqnr: Optional[float] = None  # None: weight not quantized (e.g. dynamic matmul)
    weight_cosine: Optional[float] = None


_COLUMNS = (  # (header, attribute, format)
    ("act SQNR", "act_sqnr", "{:9.2f}"),
    ("act cos", "act_cosine", "{:8.5f}"),
    ("local SQNR", "local_sqnr", "{:10.2f}"),
    ("w SQNR", "weight_sqnr", "{:7.2f}"),
    ("w cos", "weight_cosine", "{:8.5f}"),
)


@dataclass
class NumericReport:
    """Per-layer numerics in graph order, plus end-to-end output agreement.

    `end_to_end` maps a pair ("converted vs float", "compiled vs converted", ...) to
    {"sqnr", "cosine", "max_abs"}; `unmatched` lists quantized layers with no float twin.
    """

    layers: list[LayerNumerics] = field(default_factory=list)
    end_to_end: dict[str, dict[str, float]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    def worst(self, n: Optional[int] = None, by: str = "local_sqnr") -> list[LayerNumerics]:
        """Layers sorted worst first by `by` (any SQNR/cosine field: lower is worse)."""
        ranked = sorted(self.layers, key=lambda l: math.inf if getattr(l, by) is None else getattr(l, by))
        return ranked if n is None else ranked[:n]

    def table(self, n: Optional[int] = None, by: str = "local_sqnr") -> str:
        rows = self.worst(n, by)
        width = max([len("layer")] + [len(l.name) for l in rows])
        head = f"{'layer':<{width}}  {'op':<8}" + "".join(f"  {h:>{len(f.format(0.0))}}" for h, _, f in _COLUMNS)
        lines = [head, "-" * len(head)]
        for l in rows:
            cells = "".join(
                f"  {('-' if getattr(l, a) is None else f.format(getattr(l, a))):>{len(f.format(0.0))}}"
                for _, a, f in _COLUMNS
            )
            lines.append(f"{l.name:<{width}}  {l.op:<8}{cells}")
        for pair, stats in self.end_to_end.items():
            lines.append(f"end to end, {pair}: SQNR {stats['sqnr']:.2f} dB, cosine {stats['cosine']:.5f}, "
                         f"max |diff| {stats['max_abs']:.4g}")
        if self.unmatched:
            lines.append(f"not matched to a float layer: {', '.join(self.unmatched)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(dataclasses.asdict(self), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "NumericReport":
        data = json.loads(text)
        return cls(layers=[LayerNumerics(**l) for l in data["layers"]], end_to_end=data["end_to_end"],
                   unmatched=data["unmatched"])

    def plot(self, path: str, title: str = "int8 vs float, per layer") -> str:
        """Write a PNG: SQNR per layer (graph order) for activations, local and weights."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError("NumericReport.plot needs matplotlib: pip install 'inductor-quant[plot]' "
                              "(or pip install matplotlib); table() and to_json() work without it") from exc
        names = [l.name for l in self.layers]
        fig = Figure(figsize=(9, 1.5 + 0.28 * max(1, len(names))))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ys = range(len(names))
        for attr, label, marker in (("act_sqnr", "activation (cumulative)", "o"),
                                    ("local_sqnr", "activation (layer alone)", "s"),
                                    ("weight_sqnr", "weight", "^")):
            pts = [(getattr(l, attr), y) for l, y in zip(self.layers, ys) if getattr(l, attr) is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
        ax.set_yticks(list(ys), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("SQNR (dB, higher is better)")
        e2e = self.end_to_end.get("converted vs float")
        ax.set_title(title + (f" — end to end {e2e['sqnr']:.1f} dB" if e2e else ""))
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        return path


# ----------------------------------------------------------------------------- matching
def _module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return str(list(stack.values())[-1][0]) if stack else node.name


def layer_nodes(gm: GraphModule) -> dict[str, Node]:
    """name -> conv/linear node, in graph order; name = module path, '#k' for later calls."""
    out: dict[str, Node] = {}
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in LAYER_OPS:
            path = _module_path(n)
            k = calls.get(path, 0)
            calls[path] = k + 1
            out[path if k == 0 else f"{path}#{k}"] = n
    return out


def _is_dq(arg: Any) -> bool:
    return isinstance(arg, Node) and arg.op == "call_function" and arg.target in _DQ_OPS


def _is_quantized(node: Node) -> bool:
    return any(_is_dq(a) for a in node.args[:2])


def _activation_source(x: Node) -> Node:
    """The float value a layer's input q/dq chain starts from."""
    while isinstance(x, Node) and x.op == "call_function" and x.target in _QDQ_OPS:
        x = x.args[0]
    return x


def _depends_on(node: Any, src: Node) -> bool:
    if node is src:
        return True
    return (isinstance(node, Node) and node.op == "call_function" and node.target in _QDQ_OPS
            and any(_depends_on(a, src) for a in node.all_input_nodes))


def float_graph(float_model: Any, example_inputs: tuple) -> GraphModule:
    """The float model as prepare_pt2e sees it: exported, eval semantics, BN folded (a copy)."""
    if isinstance(float_model, torch.export.ExportedProgram):
        float_model = float_model.module()
    if isinstance(float_model, GraphModule):
        gm = copy.deepcopy(float_model)
    else:
        gm = torch.export.export(float_model, example_inputs).module()
    move_exported_model_to_eval(gm)
    fold_bn_into_conv(gm)
    return gm


# ----------------------------------------------------------------------------- running
class _FloatRun(torch.fx.Interpreter):
    """Records, per layer node: (input, output, weight) as copies (relu_ may mutate them)."""

    def __init__(self, gm: GraphModule, keep: dict[Node, str]):
        super().__init__(gm)
        self.keep, self.seen = keep, {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n in self.keep:
            x, w = (self.env.get(a) if isinstance(a, Node) else a for a in n.args[:2])
            self.seen[self.keep[n]] = (x.detach().clone(), out.detach().clone(), w.detach().clone())
        return out


class _QuantRun(torch.fx.Interpreter):
    """At each matched quantized layer: compares with the float run, cumulative and local."""

    def __init__(self, gm: GraphModule, keep: dict[Node, str], floats: dict, stats: dict):
        super().__init__(gm)
        self.keep, self.floats, self.stats = keep, floats, stats

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        name = self.keep.get(n)
        if name is not None and name in self.floats:
            x_f, y_f, w_f = self.floats.pop(name)
            first_batch = name not in self.stats
            act, local, weight = self.stats.setdefault(name, (Agreement(), Agreement(), Agreement()))
            act.add(y_f, out)
            local.add(y_f, self._replay(n, _activation_source(n.args[0]), x_f))
            if first_batch and _is_dq(n.args[1]):  # weights are the same every batch
                weight.add(w_f, self.env[n.args[1]])
        return out

    def _replay(self, n: Node, src: Node, value: torch.Tensor) -> torch.Tensor:
        """Re-run `n` with its input chain (q/dq, choose_qparams) starting from `value`."""
        memo: dict[Node, Any] = {src: value}

        def val(m: Node) -> Any:
            if m not in memo:
                if _depends_on(m, src):
                    memo[m] = m.target(*map_arg(m.args, val), **map_arg(m.kwargs, val))
                else:
                    memo[m] = self.env[m] if m in self.env else fetch_attr(self.module, m.target)
            return memo[m]

        return n.target(*map_arg(n.args, val), **map_arg(n.kwargs, val))


def _batches(inputs: Any) -> list[tuple]:
    """A tensor or a tuple is one batch of positional inputs; a list is several batches."""
    if isinstance(inputs, list):
        return [b if isinstance(b, tuple) else (b,) for b in inputs]
    return [inputs if isinstance(inputs, tuple) else (inputs,)]


def compare(
    float_model: Any,
    converted_model: GraphModule,
    inputs: Any,
    *,
    compiled_model: Optional[Callable] = None,
) -> NumericReport:
    """Run float and converted models on `inputs` and report per-layer and end-to-end numerics.

    `float_model`: the eval-mode nn.Module (exported here on the first batch) or its exported
    GraphModule / ExportedProgram (export it with dynamic_shapes if batch shapes differ).
    `inputs`: one batch (tensor or tuple of positional inputs) or a list of batches.
    With `compiled_model` (e.g. torch.compile(converted_model)), its outputs are compared too.
    """
    batches = _batches(inputs)
    fgm = float_graph(float_model, batches[0])
    f_layers, q_layers = layer_nodes(fgm), layer_nodes(converted_model)
    quantized = {name: n for name, n in q_layers.items() if _is_quantized(n)}
    matched = {name: n for name, n in quantized.items() if name in f_layers and f_layers[name].target == n.target}
    f_keep = {f_layers[name]: name for name in matched}
    q_keep = {n: name for name, n in matched.items()}
    stats: dict[str, tuple] = {}
    e2e = {k: Agreement() for k in ("converted vs float",)}
    if compiled_model is not None:
        e2e.update({"compiled vs float": Agreement(), "compiled vs converted": Agreement()})
    with torch.no_grad():
        for batch in batches:
            frun = _FloatRun(fgm, f_keep)
            y_float = _flat_output(frun.run(*batch))
            y_conv = _flat_output(_QuantRun(converted_model, q_keep, frun.seen, stats).run(*batch))
            e2e["converted vs float"].add(y_float, y_conv)
            if compiled_model is not None:
                y_comp = _flat_output(compiled_model(*batch))
                e2e["compiled vs float"].add(y_float, y_comp)
                e2e["compiled vs converted"].add(y_conv, y_comp)
    layers = []
    for name, n in matched.items():
        if name not in stats:
            continue
        act, local, weight = stats[name]
        has_w = _is_dq(n.args[1])
        layers.append(LayerNumerics(
            name=name, module=name.split("#")[0], node=n.name, op=n.target.__name__.split(".")[0],
            act_sqnr=act.sqnr, act_cosine=act.cosine, act_max_abs=act.max_abs,
            local_sqnr=local.sqnr, local_cosine=local.cosine,
            weight_sqnr=weight.sqnr if has_w else None, weight_cosine=weight.cosine if has_w else None,
        ))
    return NumericReport(layers=layers, end_to_end={k: a.as_dict() for k, a in e2e.items()},
                         unmatched=[name for name in quantized if name not in matched])

