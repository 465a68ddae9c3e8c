"""How our passes get into Inductor: where they run, which compiles they rewrite, the built-in
switch, the cache key.

Decision (torch 2.13):

* Where: one `CustomGraphPass` appended to `torch._inductor.config.joint_custom_pre_pass`
  (a documented slot that accepts a list). In a freezing compile (`config.freezing` and grad
  disabled) Inductor runs the joint-graph passes inside `fw_compiler_freezing`, on the
  decomposed ATen inference graph, *immediately before* `freeze()`. Our phases rewrite there:
  dq -> conv/linear becomes `onednn.qconv_prepack(w_int8, ...)` + `qconv_pointwise`. `freeze()`
  then turns the weights into constants and its constant folding evaluates the prepack node,
  so the packed weight is a frozen constant (prepacked once, at compile time). The graph is
  the one the freezing patterns would see (same decompositions), so patterns are traced with
  `fwd_only` like Inductor's own. torch 2.13 has no fake kernels for `onednn.q*_prepack`, and
  `freeze()` fake-propagates before it folds: install() registers fake kernels for the two
  prepack ops (kernels/onednn.py), which changes no numerics.
* Only the freezing compile is rewritten. The same slot also runs inside `partition_fn` when
  grad is enabled and a parameter (e.g. an fp32 bias) requires grad; grad is disabled there
  too, so `freezing_active()` alone would accept that graph. It is the joint forward+backward
  graph (inputs `primals_*` / `tangents_*`, `is_autograd_joint`), never frozen, and the fused
  ops cannot be lowered in it: we leave it as dq -> fp32 -> q and report it like a
  non-freezing compile (below).
* Built-ins off while installed: torch's own quantization fusions run after ours and would
  see what we leave unfused -- including forms we refuse for correctness (e.g. weights
  quantized per channel on axis 1, which they fuse with wrong numbers). So `install()` takes
  them out (`builtins.set_builtin_fusions(False)`: the entries whose handlers live in
  `fx_passes/quantization.py`, from the global freezing and post-grad pattern passes) and
  `uninstall()` restores the state found at `install()`. `set_builtin_fusions(True)` after
  install is allowed (our rules still run first, at the joint stage) at the risk described
  in its docstring. Nothing of torch's is patched; entries are removed and put back.
* Cache key: the FX graph cache key includes each custom pass's `uuid()`. Ours hashes the
  source of passes/ and kernels/ plus the switch states (installed, built-ins on/off), so a
  changed pass or switch never serves a stale artifact. (AOTAutogradCache bypasses freezing
  compiles in 2.13; the frozen graph itself already contains our fused ops.) Our pass object
  is in the config while installed *or* while the built-ins are off, so both states key.
* Decompositions: while installed, Inductor's decomposition of choose_qparams.tensor is
  replaced by one that computes what eager computes (decompositions.py); uninstall restores it.
* The user's config is composed with, never overwritten: install appends to whatever the slot
  holds (None, one pass or a list); uninstall removes only our object.
* Without freezing (config.freezing off, or grad enabled) the pass rewrites nothing: the
  compiled model stays correct (dq -> fp32 conv -> q) and one warning per process says how to
  turn freezing on; stats list the layers as unfused with that reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pathlib
import warnings

import torch
from torch._inductor import config
from torch._inductor.custom_graph_pass import CustomGraphPass

from inductor_quant.kernels import onednn as K
from inductor_quant.kernels.cpu import cpu_info

from . import decompositions, prepack, registry
from .builtins import builtin_fusions_enabled, set_builtin_fusions

NO_FREEZING = (
    "inductor_quant: quantized conv/linear layers were left unfused (dequantize -> fp32 -> quantize) "
    "because this compile does not freeze. Enable freezing with TORCHINDUCTOR_FREEZING=1 or "
    "torch._inductor.config.freezing = True, and compile/run under torch.no_grad()."
)
_state = {"installed": False, "warned": False}


@functools.cache
def _source_hash() -> str:
    root = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for d in (root, root.parent / "kernels"):
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def freezing_active() -> bool:
    """compile_fx's test for the freezing path, as seen from inside a joint-graph pass. Necessary,
    not sufficient: the autograd partitioner also runs the joint passes with grad disabled."""
    return bool(config.freezing) and not torch.is_grad_enabled()


JOINT_INPUTS = ("primals", "tangents")  # AOTAutograd's names for the joint graph's inputs


def is_autograd_joint(graph: torch.fx.Graph) -> bool:
    """The forward+backward graph `partition_fn` runs the joint passes on (grad-enabled compile of
    a model with parameters that require grad): inputs `primals_*` / `tangents_*`. The inference
    graph `fw_compiler_freezing` passes has `arg*_*` inputs. (Trained graphs are never frozen.)"""
    return any(n.name.startswith(JOINT_INPUTS) for n in graph.find_nodes(op="placeholder"))


class QuantFusionPass(CustomGraphPass):
    def __call__(self, graph: torch.fx.Graph) -> None:
        if not _state["installed"]:
            return
        if freezing_active() and not is_autograd_joint(graph):
            registry.run(graph)
        elif registry.quantized_compute(graph):
            registry.report_unfused(graph, "freezing off (config.freezing / torch.no_grad())")
            if not _state["warned"]:
                _state["warned"] = True
                warnings.warn(NO_FREEZING, UserWarning, stacklevel=2)

    def uuid(self) -> str:
        # the CPU facts decide what fuses (kernels/cpu.py): an artifact built under another
        # ONEDNN_MAX_CPU_ISA cap must not be served here
        return (f"inductor_quant:{_source_hash()}:installed={_state['installed']}:builtins={builtin_fusions_enabled()}"
                f":cpu={cpu_info().summary()}")


_PASS = QuantFusionPass()


def sync_config() -> None:
    """Put our pass into the slot iff installed or built-ins off; leave the user's passes alone."""
    current = config.joint_custom_pre_pass
    want = _state["installed"] or not builtin_fusions_enabled()
    if want and _PASS not in _as_list(current):
        _state["user_value"] = current  # restored as-is when we leave
        config.joint_custom_pre_pass = _as_list(current) + [_PASS]
    elif not want and _PASS in _as_list(current):
        rest = [p for p in _as_list(current) if p is not _PASS]
        original = _state.pop("user_value", None)
        config.joint_custom_pre_pass = original if rest == _as_list(original) else (rest or None)


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def install() -> None:
    """Install our passes into Inductor and switch torch's built-in quantization fusions off
    (idempotent). `uninstall()` restores the built-in state found here."""
    K.register_fake_prepacks()
    K.register_conv1d_meta_fix()
    registry.phase_passes()  # trace the patterns now, not inside the first compile
    if not _state["installed"]:
        _state["builtins_before"] = builtin_fusions_enabled()
        _state["installed"] = True
        set_builtin_fusions(False)
        decompositions.install()
    sync_config()


def uninstall() -> None:
    """Remove our passes from Inductor and put torch's built-in fusions back to their state
    before `install()` (idempotent)."""
    if _state["installed"]:
        _state["installed"] = False
        set_builtin_fusions(_state.pop("builtins_before", True))
        decompositions.uninstall()
    sync_config()


def is_installed() -> bool:
    return _state["installed"]


@contextlib.contextmanager
def installed():
    """Install for the duration of a block (restores the previous state)."""
    before = _state["installed"]
    install()
    try:
        yield
    finally:
        if not before:
            uninstall()


def reset_warning() -> None:
    """Let the once-per-process warnings (no freezing; int8 saturation on this CPU) fire again."""
    _state["warned"] = False
    prepack.reset_saturation_warning()


__all__ = ["install", "uninstall", "installed", "is_installed", "freezing_active"]
