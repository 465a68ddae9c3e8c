"""GPTQ for group-wise 4-bit linear weights: round so that the layer's output stays close, not
only its weight.

Round-to-nearest makes each weight as close as it can be on its own. GPTQ rounds one input
column at a time and moves that column's rounding error onto the columns not rounded yet, in the
proportions the inputs' second moments H = XᵀX / n say cancel it best in X·Wᵀ (the optimal
brain surgeon update, with H⁻¹ in its Cholesky form and columns taken in blocks of `BLOCK`). A
group's scale and zero point are fitted by the weight's own observer when the first column of the
group comes up, on the columns as the earlier errors have moved them, so the grid is the one the
config asks for (least squares with float zero points, min/max, symmetric).

Run it on a prepared model (after `prepare_pt2e`, instead of the calibration loop: its pass runs
the observers too), then `convert_pt2e`:

    prepared = prepare_pt2e(exported, quantizer)   # linears: weight-only int4 group-wise configs
    gptq(prepared, calibration_batches)
    model = convert_pt2e(prepared)

It acts on the linears whose weight observer is group-wise with 16 levels or fewer (4 bits):
there rounding costs the most; int8 weights round within 1/254 of their range already. Each
such linear gets a new weight (on its grid) and its observer the grid, so convert stores exactly
the integers GPTQ chose. The old weight is kept if anything else reads it (a tied embedding). A
linear whose calibration rows are fewer than its inputs (its H would be singular) keeps
round-to-nearest; `gptq` returns why, per linear. A linear on rows picked from a tensor (a
decoder's LM head on the last token's) is fitted on all that tensor's rows.

On Gemma-3-270M (weight-only int4 in groups of 32, 32 WordNet passages of 128 tokens): eager
perplexity 58.57 -> 54.60 against the float model's 52.86 (docs/PERFORMANCE.md, section 5b).
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable

import torch
from torch.ao.quantization.observer import ObserverBase
from torch.fx import GraphModule, Interpreter, Node

from .graph_utils import drop_attrs_if_unused, fetch_attr, new_attr
from .quantizer.llm_observers import GroupwiseMinMaxObserver

log = logging.getLogger(__name__)
LINEAR = torch.ops.aten.linear.default
DAMP = 0.1    # of H's mean diagonal, added to its diagonal (0.01 measured 54.86, 0.1 54.60 on Gemma)
BLOCK = 128   # columns updated one by one before the rest of the matrix gets their errors at once
MAX_LEVELS = 16
# A linear that reads some rows of a tensor (a decoder's LM head reads the last token's) takes its
# second moments over all the rows of that tensor: the same distribution, enough rows to fit.
PICKS = (torch.ops.aten.index_select.default, torch.ops.aten.select.int, torch.ops.aten.slice.Tensor)

FITTED = "fitted with GPTQ"


def gptq(prepared: GraphModule, calibration: Iterable, damp: float = DAMP) -> Dict[str, str]:
    """Fit the 4-bit group-wise weights of `prepared` (in place) on the `calibration` batches
    (tensors or tuples of positional inputs); the observers see the batches too. Returns
    {linear node name: FITTED or why it kept round-to-nearest}."""
    targets = _targets(prepared)
    hessians, rows = _second_moments(prepared, {x for x, _, _ in targets.values()}, calibration,
                                     {n for n in prepared.graph.nodes if _observes_a_constant(prepared, n)})
    outcome: Dict[str, str] = {}
    old = set()
    for linear, (x, observer_node, observer) in targets.items():
        weight_node = observer_node.args[0]
        weight = fetch_attr(prepared, weight_node.target)
        k = weight.shape[1]
        if rows.get(x, 0) < k:
            outcome[linear.name] = (f"kept round-to-nearest: {rows.get(x, 0)} calibration rows for {k} inputs "
                                    f"(GPTQ needs at least as many)")
            continue
        fitted, scale, zero_point = _fit(weight.detach(), hessians[x] / rows[x], observer, damp)
        name = new_attr(prepared, f"{weight_node.target}_gptq", fitted.to(weight.dtype))
        with prepared.graph.inserting_before(observer_node):
            new_node = prepared.graph.get_attr(name)
        new_node.meta.update(weight_node.meta)
        observer_node.replace_input_with(weight_node, new_node)
        if not weight_node.users:
            prepared.graph.erase_node(weight_node)
            old.add(weight_node.target)
        observer.fitted = (scale, zero_point)
        observer(fitted.to(weight.dtype))  # its min/max (and least-squares weight) follow the new one
        outcome[linear.name] = FITTED
    drop_attrs_if_unused(prepared, old)
    prepared.graph.lint()
    prepared.recompile()
    for name, why in outcome.items():
        if why != FITTED:
            log.info("gptq: %s %s", name, why)
    return outcome


def _targets(gm: GraphModule) -> dict:
    """linear node -> (the node its input rows come from, its weight observer's node, the
    observer), for linears whose constant weight goes through a group-wise observer of at most
    MAX_LEVELS levels."""
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not LINEAR or len(node.args) < 2:
            continue
        x, w = node.args[0], node.args[1]
        if not (isinstance(x, Node) and isinstance(w, Node) and w.op == "call_module"):
            continue
        while x.op == "call_function" and x.target in PICKS and isinstance(x.args[0], Node) and _picks_rows(x):
            x = x.args[0]
        observer = gm.get_submodule(w.target)
        if (isinstance(observer, GroupwiseMinMaxObserver) and observer.quant_max - observer.quant_min + 1 <= MAX_LEVELS
                and isinstance(w.args[0], Node) and w.args[0].op == "get_attr" and len(w.users) == 1):
            found[node] = (x, w, observer)
    return found


def _picks_rows(node: Node) -> bool:
    """Whether `node` takes some rows of its input and keeps the last dimension whole."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    val = node.args[0].meta.get("val")
    return isinstance(dim, int) and val is not None and dim % val.dim() != val.dim() - 1


def _observes_a_constant(gm: GraphModule, node: Node) -> bool:
    """An observer (not a fake-quantize: it returns its input) on a weight (a get_attr): it sees
    the same tensor in every batch."""
    return (node.op == "call_module" and len(node.args) == 1 and isinstance(node.args[0], Node)
            and node.args[0].op == "get_attr" and isinstance(gm.get_submodule(node.target), ObserverBase))


def _second_moments(gm: GraphModule, inputs: set, calibration: Iterable, constant_observers: set):
    """input node -> Σ xᵀx (fp64 sums of fp32 products, over every row of every batch), and -> the
    number of rows. Weight observers see their weight in the first batch only (it does not change;
    their finiteness checks on a 262k x 640 LM head took 17 s over 32 batches)."""
    sums: dict = {}
    rows: dict = {}
    first = [True]

    class Recorder(Interpreter):
        def run_node(self, n):
            if n in constant_observers and not first[0]:
                return self.env[n.args[0]]  # an observer returns its input
            out = super().run_node(n)
            if n in inputs and isinstance(out, torch.Tensor):
                x = out.detach().reshape(-1, out.shape[-1]).float()
                xtx = (x.T @ x).double()
                sums[n] = xtx if n not in sums else sums[n].add_(xtx)
                rows[n] = rows.get(n, 0) + x.shape[0]
            return out

    seen = 0
    with torch.no_grad():
        for batch in calibration:
            Recorder(gm).run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
            first[0] = False
            seen += 1
    if seen == 0:
        raise ValueError("gptq(): the calibration iterable yielded no batches. Fix: pass a non-empty list of "
                         "input batches (the model's positional inputs, as for calibration)")
    return sums, rows


def _fit(weight: torch.Tensor, h: torch.Tensor, observer: GroupwiseMinMaxObserver, damp: float):
    """(weight on its grid [N, K], scale [N*K/g], zero point [N*K/g]) for `weight` [N, K]. H's
    factor in fp64, the weight's updates in fp32 (as rounded, 2x less to move: an LM head is
    262k x 640)."""
    w = weight.float().clone()
    n, k = w.shape
    g = observer.group_size
    h = h.clone()
    dead = torch.diagonal(h) == 0  # an input that was always 0: its weights do nothing
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    # upper Cholesky factor of H⁻¹: row i holds how column i's error spreads over columns >= i
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    out = torch.empty_like(w)
    scales = torch.empty(n, k // g, dtype=torch.float32)
    zeros = None
    step = g * max(1, BLOCK // g)  # whole groups per block: a group's columns are rounded in one block
    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        block = w[:, b0:b1].clone()
        errors = torch.empty_like(block)
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:  # a new group: its grid from the columns as they are now
                s, z = observer.fit_groups(block[:, i:i + g])
                if zeros is None:
                    zeros = torch.empty(n, k // g, dtype=z.dtype)
                scales[:, col // g], zeros[:, col // g] = s, z
                s32, z32 = s.float(), z.float()
            q = (torch.clamp(torch.round(block[:, i] / s32 + z32), observer.quant_min, observer.quant_max) - z32) * s32
            out[:, col] = q
            errors[:, i] = (block[:, i] - q) / u[col, col]
            block[:, i:].addr_(errors[:, i], u[col, col:b1], alpha=-1)
        w[:, b1:].sub_(errors @ u[b0:b1, b1:])
    return out, scales.reshape(-1), zeros.reshape(-1)
