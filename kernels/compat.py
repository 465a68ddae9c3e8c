"""Every private torch name inductor_quant relies on, reached through this one file.

torch moves private names between releases. Each entry below is looked up once, behind a
feature check, so a missing one costs a clear warning and a correct unfused model (the
layers stay dequantize -> fp32 -> quantize), never a crash in `convert_pt2e` and never a
misleading reason. `missing()` lists what this torch lacks; the tests assert it is empty on
every supported torch (2.13, 2.14), so a release that renames one fails CI by name.

What is here, and who uses it:
  pattern_matcher      Inductor's pattern matcher (gen_pattern, fwd_only, Match, passes)  passes/
  builtin_passes       torch's global freezing / post-grad pattern passes and their entries  passes/builtins.py
  decomposition_tables Inductor's decomposition tables                                   passes/decompositions.py
  meta_kernel          torch's Python meta kernel for an op (checked present by `missing()`)
  real_tensors         leave fake-tensor mode inside a compile (probes run real kernels)    kernels/probe.py
  fake_mode_of         the active fake mode (propagating values of nodes we create)        passes/fused.py
  graph_kind           AOTAutograd's names for graph inputs (joint graph or inference)    passes/install.py
  hash_files           Inductor's file-hash helper for a custom pass's cache key            passes/install.py
  run_and_get_code     compile-and-run returning Inductor's generated code                inductor_quant/report.py
  inductor_may_drop    Inductor's post-grad no-op table (copies it replaces by their input) passes/accumulators.py
  inductor_counters    torch's counters["inductor"] (its quantization passes' counts)     passes/upstream_counters.py
  load_quantized_decomposed  registers torch.ops.quantized_decomposed (the Q/DQ ops)     inductor_quant, passes/
  cpu_capabilities     torch's cpuinfo report of the CPU's features (torch.cpu.get_capabilities
                       in 2.13 and 2.14; else torch._C._cpu._get_cpu_capability behind it)  kernels/cpu.py

Used directly, as torch documents them for pass writers: `torch._inductor.config` and its
`joint_custom_pre_pass` slot, `CustomGraphPass`, the symbolic-shape helpers of
`torch.fx.experimental.symbolic_shapes`, `torch.utils._pytree.tree_map`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings

import torch

# AOTAutograd names the joint forward+backward graph's inputs primals_* / tangents_*, and the
# inference graph's (the one freezing compiles) arg<i>_<j>
JOINT_INPUT_PREFIXES = ("primals", "tangents")
INFERENCE_INPUT = re.compile(r"arg\d+_\d+$")


@functools.cache
def load_quantized_decomposed() -> None:
    """Register the quantized_decomposed ops (Q/DQ) that converted models call."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401


@functools.cache
def pattern_matcher():
    """torch._inductor.pattern_matcher, or None when it lacks a name we use."""
    try:
        from torch._inductor import pattern_matcher as pm
    except ImportError:
        return None
    names = ("gen_pattern", "fwd_only", "Match", "PatternMatcherPass", "GraphPatternEntry", "CallFunction", "ListOf",
             "Arg", "Ignored")
    return pm if all(hasattr(pm, n) for n in names) else None


def builtin_passes() -> list:
    """torch's global pattern passes where its own quantization fusions register: the freezing
    passes (weight prepack, post-op folds) and the post-grad passes (lowerings). Registration
    is lazy (on the first compile); this forces it. [] when this torch has no such passes."""
    try:
        from torch._inductor.fx_passes import freezing_patterns, post_grad
    except ImportError:
        return []
    passes = []
    for module in (freezing_patterns, post_grad):
        if hasattr(module, "lazy_init"):
            module.lazy_init()
        passes += [p for p in getattr(module, "pass_patterns", ()) if isinstance(getattr(p, "patterns", None), dict)]
    return passes


def entry_handler(entry):
    """The function a pattern entry runs (unwrapping functools.partial), or None."""
    handler = getattr(entry, "handler", None)
    return getattr(handler, "func", handler)


def decomposition_tables() -> tuple:
    """The decomposition table Inductor reads, and the cached copy it hands out when
    fallback_random is off. () when this torch keeps them elsewhere."""
    try:
        from torch._inductor import decomposition
    except ImportError:
        return ()
    tables = [getattr(decomposition, "decompositions", None)]
    if hasattr(decomposition, "fast_random_decomps"):
        tables.append(decomposition.fast_random_decomps())
    return tuple(t for t in tables if isinstance(t, dict))


def meta_kernel(op):
    """torch's registered Python meta kernel for `op`, or None."""
    try:
        from torch._meta_registrations import meta_table
    except ImportError:
        return None
    return meta_table.get(op)


def real_tensors():
    """A context in which tensors are real even inside a compile's fake mode."""
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:
        return contextlib.nullcontext()
    return unset_fake_temporarily()


def fake_mode_of(values):
    """The fake mode of the first fake tensor in `values`, else the active one, else None."""
    from torch._subclasses.fake_tensor import FakeTensor

    mode = next((v.fake_mode for v in values if isinstance(v, FakeTensor)), None)
    return mode or torch._guards.detect_fake_mode()


def hash_files(paths: tuple, extra: str = "") -> str:
    """A digest of the files' contents and `extra` (torch's helper for custom-pass cache keys)."""
    try:
        from torch._inductor.custom_graph_pass import get_hash_for_files
    except ImportError:
        import hashlib

        h = hashlib.sha256(extra.encode())
        for path in paths:
            with open(path, "rb") as f:
                h.update(f.read())
        return h.hexdigest()
    return get_hash_for_files(tuple(paths), extra).hex()


def run_and_get_code(fn, *args):
    """(fn(*args), [generated wrapper code of every compile it triggered], or None where this torch
    does not hand the code out). Unlike torch's helper of that name, it never resets dynamo
    (which would discard every model the user compiled): it listens where Inductor hands each
    module's code to its debug output."""
    from unittest import mock

    from torch._inductor.graph import GraphLowering

    if not hasattr(GraphLowering, "save_output_code"):  # never torch's helper: it resets dynamo
        warn_missing("GraphLowering.save_output_code", "the generated code cannot be read (reports check stats only).")
        return fn(*args), None
    codes: list = []
    with mock.patch.object(GraphLowering, "save_output_code", lambda code: codes.append(code)):
        result = fn(*args)
    return result, codes


# copies Inductor may replace by their input when input and output look alike (torch's post-grad
# no-op removal); used only when this torch has no such table to read
_MAY_DROP_FALLBACK = ("clone", "alias", "copy", "convert_element_type", "slice", "cat", "view")


_ARITHMETIC = ("add", "sub", "mul", "div")
_CONSTRUCTORS = ("full", "zeros", "ones", "scalar_tensor", "full_like", "zeros_like", "ones_like", "new_full",
                 "new_zeros", "new_ones")


def _op_name(target) -> str:
    return getattr(getattr(target, "_schema", None), "name", "").split("::")[-1]


def inductor_may_drop(node: torch.fx.Node) -> bool:
    """Might Inductor remove `node` as a no-op and hand its input out in its place (a clone of a
    tensor with the same layout, a cast to the same dtype, a cat of one tensor; + 0, * 1 with a
    constant)? Then writing into node's result in place would write into its input."""
    try:
        from torch._inductor.fx_passes.post_grad import noop_registry
    except ImportError:
        noop_registry = None
    target = node.target
    name = _op_name(target)
    if name in _ARITHMETIC:  # identity arithmetic: + 0 / * 1, or a constant operand of unknown value
        identity = 0 if name in ("add", "sub") else 1
        return any(a == identity if not isinstance(a, torch.fx.Node)
                   else a.op == "get_attr" or _op_name(a.target) in _CONSTRUCTORS for a in node.args[:2])
    if noop_registry is not None:
        droppable = target in noop_registry
    else:
        droppable = _op_name(target) in _MAY_DROP_FALLBACK
    if not droppable:
        return False
    # the two kinds that are never no-ops: a cast that changes dtype, a cat of several tensors
    if target is torch.ops.prims.convert_element_type.default:
        src = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        return src is None or src.dtype == node.args[1]
    if target is torch.ops.aten.cat.default:
        return len(node.args[0]) < 2
    return True


@functools.cache
def cpu_capabilities() -> dict:
    """torch's cpuinfo report for this CPU ({"avx2": True, "avx512_vnni": False, "cpu_name": ...,
    ...}); {} when this torch has none or it fails. cpuinfo works off Linux too and sees only what
    the OS enabled; it knows nothing of oneDNN's cap."""
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is None:
        get = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if get is None:
        return {}
    try:
        return dict(get())
    except Exception:  # noqa: BLE001 - a report that cannot be read: /proc/cpuinfo decides
        return {}


def inductor_counters():
    """torch's `counters["inductor"]` (what its own passes count, and tests assert), or None."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return counters["inductor"]


def aot_compilation() -> bool:
    """Is this compile for AOTInductor (Inductor's `V.aot_compilation`)? False when unknown."""
    try:
        from torch._inductor.virtualized import V

        return bool(V.aot_compilation)
    except Exception:  # noqa: BLE001 - an unknown torch: assume a JIT compile
        return False


def graph_kind(graph: torch.fx.Graph) -> str:
    """"joint" (AOTAutograd's forward+backward graph: never frozen), "inference" (what a
    freezing compile rewrites) or "unknown" (inputs named in a way this code does not know)."""
    names = [n.name for n in graph.find_nodes(op="placeholder")]
    if any(n.startswith(JOINT_INPUT_PREFIXES) for n in names):
        return "joint"
    return "inference" if all(INFERENCE_INPUT.match(n) for n in names) else "unknown"


UNKNOWN_GRAPH_WARNING = (
    "inductor_quant: this torch ({version}) names the compiled graph's inputs in a way inductor_quant "
    "does not know ({names}), so it cannot tell an inference graph from a training one; quantized "
    "layers stay dequantize -> fp32 -> quantize (correct, slower). Use torch 2.13-2.14."
)


def missing() -> list:
    """The features above this torch lacks (empty on the supported versions)."""
    out = []
    if pattern_matcher() is None:
        out.append("torch._inductor.pattern_matcher (gen_pattern, fwd_only, Match, PatternMatcherPass)")
    if not decomposition_tables():
        out.append("torch._inductor.decomposition.decompositions")
    if meta_kernel(torch.ops.onednn.qconv_pointwise.default) is None:
        out.append("torch._meta_registrations.meta_table[onednn.qconv_pointwise]")
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily  # noqa: F401
    except ImportError:
        out.append("torch._subclasses.fake_tensor.unset_fake_temporarily")
    from torch._inductor.graph import GraphLowering

    if not hasattr(GraphLowering, "save_output_code"):
        out.append("torch._inductor.graph.GraphLowering.save_output_code")
    if not cpu_capabilities():
        out.append("torch.cpu.get_capabilities (cpuinfo's CPU features)")
    return out


def warn_missing(what: str, consequence: str) -> None:
    warnings.warn(f"inductor_quant: this torch ({torch.__version__}) lacks {what}; {consequence}",
                  UserWarning, stacklevel=3)
