"""How our passes get into Inductor: one `Installation` object owns everything installing changes
in the process (our config entry, the built-in switch and what it removed, the decomposition we
replace, the cache key).

Decision (torch 2.13-2.14):

* Where: one `CustomGraphPass` appended to `torch._inductor.config.joint_custom_pre_pass`
  (a documented slot that accepts a list). In a freezing compile (`config.freezing` and grad
  disabled) Inductor runs the joint-graph passes inside `fw_compiler_freezing`, on the
  decomposed ATen inference graph, *immediately before* `freeze()`. Our phases rewrite there:
  dq -> conv/linear becomes `onednn.qconv_prepack(w_int8, ...)` + `qconv_pointwise`. `freeze()`
  then turns the weights into constants and its constant folding evaluates the prepack node,
  so the packed weight is a frozen constant (prepacked once, at compile time). torch has no
  fake kernels for `onednn.q*_prepack`, and `freeze()` fake-propagates before it folds:
  install() registers them (kernels/registration.py), which changes no numerics.
* A second `CustomGraphPass` in `joint_custom_post_pass` (same graph, after Inductor's own
  joint-graph patterns, which fuse matmul -> softmax -> matmul into one attention call): in a
  graph the first pass sent to our kernel layer, attention goes there too (attention.py).
* Only the freezing compile is rewritten. The same slot also runs inside `partition_fn` when
  grad is enabled and a parameter requires grad; grad is disabled there too, so
  `freezing_active()` alone would accept that graph. It is the joint forward+backward graph
  (kernels/compat.py `graph_kind`), never frozen, and the fused ops cannot be lowered in it: we
  leave it as dq -> fp32 -> q and report it like a non-freezing compile.
* Built-ins off while installed: torch's own int8 conv/linear fusions would run after ours on
  what we leave unfused (builtins.py says which families and why). `install()` takes those
  families out and `uninstall()` puts them back where they were, keeping anything registered
  meanwhile; torch's other quantization fusions (weight-only int8, `_int_mm`) stay.
  `set_builtin_fusions(True)` after install is allowed, at the risk in its docstring.
* Cache key: the FX graph cache key includes each custom pass's `uuid()`. Ours hashes the
  source of passes/ and kernels/ plus the switch states and the CPU facts, so a changed pass,
  switch or ISA cap never serves a stale artifact. Our pass is in the config while installed
  *or* while the built-ins are off, so both states key.
* Lowering: while installed, Inductor's lowering of the fused linear with a binary post-op
  realizes its extra input first, as torch's own pattern lowering did, and under max-autotune
  a bmm with a dynamic second operand is lowered with ATen alone (torch's C++ template timing
  overwrites that operand's symbolic sizes; lowerings.py).
* Decompositions: while installed, Inductor's decomposition of choose_qparams.tensor is
  replaced by one that computes what eager computes (decompositions.py).
* The user's config is composed with, never overwritten: install appends to whatever each slot
  holds (None, one pass or a list); uninstall removes only our objects.
* Without freezing (config.freezing off, or grad enabled) the pass rewrites nothing: the
  compiled model stays correct (dq -> fp32 conv -> q) and one warning per process says how to
  turn freezing on; stats list the layers as unfused with that reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import warnings

import torch
from torch._inductor import config
from torch._inductor.custom_graph_pass import CustomGraphPass

from inductor_quant.kernels import compat, native, registration
from inductor_quant.kernels.cpu import cpu_info

from . import attention, builtins, decompositions, graph_rewrites, lowerings, norms, own_calls, registry
from .diagnostics import has_quantized_ops, report_unfused
from .kernel_limits import SATURATION_WARNING
from .reasons import Why

NO_FREEZING = (
    "inductor_quant: quantized conv/linear layers were left unfused (dequantize -> fp32 -> quantize) "
    "because this compile does not freeze. Enable freezing with TORCHINDUCTOR_FREEZING=1 or "
    "torch._inductor.config.freezing = True, and compile/run under torch.no_grad()."
)

WEIGHTS_NOT_FROZEN = (
    "inductor_quant: this compile freezes (freezing given as a torch.compile option), but Dynamo "
    "traced the model's weights as graph inputs: it makes them constants only when "
    "torch._inductor.config.freezing is on while it traces. Nothing was frozen, and the layers whose "
    "rules read weight values (weight-only int8/int4 linears) stayed float. Fix: set "
    "torch._inductor.config.freezing = True (or TORCHINDUCTOR_FREEZING=1) before the first call; "
    "options= can keep the rest."
)


def weights_not_frozen(graph: torch.fx.Graph) -> bool:
    """A freezing compile in which Dynamo handed the weights over as plain inputs: no get_attr
    constants and no parameters recorded for freezing to fold (match.constant_value finds none)."""
    context = torch._guards.TracingContext.try_get()
    if getattr(context, "params_flat", None):
        return False
    return not any(graph.find_nodes(op="get_attr"))


@functools.cache
def source_hash() -> str:
    root = pathlib.Path(__file__).resolve().parent
    files = sorted(p for d in (root, root.parent / "kernels") for p in (*d.glob("*.py"), *d.glob("native/*.cpp")))
    return compat.hash_files(tuple(str(f) for f in files), extra=",".join(f.name for f in files))


def freezing_active() -> bool:
    """compile_fx's test for the freezing path, as seen from inside a joint-graph pass. Necessary,
    not sufficient: the autograd partitioner also runs the joint passes with grad disabled."""
    return bool(config.freezing) and not torch.is_grad_enabled()


class QuantFusionPass(CustomGraphPass):
    """The object in Inductor's config slot. Stateless (Inductor may copy its config): it reads
    the process's one `INSTALLATION`."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        if not INSTALLATION.installed:
            return
        kind = compat.graph_kind(graph)
        if freezing_active() and kind == "inference":
            if has_quantized_ops(graph) and weights_not_frozen(graph):
                INSTALLATION.warn_once("weights_not_frozen", graph)
            with own_calls.in_this_compile(INSTALLATION.use_own_kernels() and not compat.aot_compilation()):
                unfused = registry.run(graph)
                if own_calls.in_use():
                    own_calls.route(graph)
                    norms.route(graph)
            if any(u.code == Why.SATURATION.code for u in unfused):
                INSTALLATION.warn_once("saturation", graph)
        elif has_quantized_ops(graph):
            reason = Why.UNKNOWN_GRAPH() if kind == "unknown" else Why.FREEZING_OFF()
            report_unfused(graph, reason)
            INSTALLATION.warn_once("unknown_graph" if kind == "unknown" else "no_freezing", graph)
            if kind == "inference":
                # unfused, the per-token ops would run as fallbacks, and torch's fake kernel of
                # choose_qparams_per_token says float64 scales where the op returns float32:
                # torch 2.14 checks and fails. As ATen ops they compute the same, and fuse.
                graph_rewrites.decompose_per_token_quant(graph)

    def uuid(self) -> str:
        return INSTALLATION.cache_key()


class AttentionPass(CustomGraphPass):
    """The object in `joint_custom_post_pass`: after Inductor's attention fusion, the attention of a
    graph our first pass sent to our kernel layer goes there too (attention.py)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        if INSTALLATION.installed and freezing_active() and _calls_our_kernels(graph):
            attention.route(graph)

    def uuid(self) -> str:
        return INSTALLATION.cache_key()


def _calls_our_kernels(graph: torch.fx.Graph) -> bool:
    """Our first pass routed this graph's layers to our kernel layer (so every condition for it held)."""
    return any(getattr(n.target, "namespace", None) == native.LIBRARY for n in graph.nodes if n.op == "call_function")


class Installation:
    """Everything installing our passes changes in the process, and how to undo it."""

    def __init__(self):
        self.installed = False
        self.builtins_off = False
        self.removed: list = []          # builtins.Removed entries, put back when switched on
        self.builtins_before = True      # the switch state found at install, restored at uninstall
        self.user_values: dict = {}      # each config slot as found, restored when we leave
        self.registrations: list = []    # registration / lowering handles, undone at uninstall
        self.decompositions: list = []   # what decompositions.install replaced, put back at uninstall
        # fused convs/linears call our kernel layer (kernels/native.py) where it loads; on unless
        # INDUCTOR_QUANT_OWN_KERNELS=0 or set_own_kernels(False)
        self.own_kernels = os.environ.get("INDUCTOR_QUANT_OWN_KERNELS", "1") != "0"
        self.warned: set = set()
        self.pass_ = QuantFusionPass()
        self.attention_pass = AttentionPass()

    # --- the switches ---------------------------------------------------------------------

    def install(self) -> None:
        if compat.pattern_matcher() is None:
            if "pattern_matcher" not in self.warned:
                self.warned.add("pattern_matcher")
                compat.warn_missing("Inductor's pattern matcher API", "quantized layers stay dequantize -> fp32 -> "
                                    "quantize (correct, slower). Use torch 2.13-2.14.")
            return
        registry.phase_passes()  # trace the patterns now, not inside the first compile
        if not self.installed:
            self.registrations.append(registration.register_fake_prepacks())
            self.registrations.append(lowerings.realize_binary_extra_inputs())
            self.registrations.append(lowerings.keep_dynamic_bmm_on_aten())
            self.builtins_before = not self.builtins_off
            self.installed = True
            self.set_builtin_fusions(False)
            self.decompositions = decompositions.install()
        self.sync_config()

    def uninstall(self) -> None:
        """Undo everything install() changed in torch, newest first."""
        if self.installed:
            self.installed = False
            self.set_builtin_fusions(self.builtins_before)
            decompositions.uninstall(self.decompositions)
            self.decompositions = []
            while self.registrations:
                self.registrations.pop().undo()
        self.sync_config()

    def set_builtin_fusions(self, enabled: bool) -> None:
        if enabled and self.builtins_off:
            builtins.reinsert(self.removed)
            self.removed, self.builtins_off = [], False
        elif not enabled and not self.builtins_off:
            self.removed, self.builtins_off = builtins.remove(), True
        self.sync_config()

    def set_own_kernels(self, enabled: bool) -> bool:
        """Route fused convs/linears to our kernel calls (or not); False when on was asked and the
        library cannot be built or loaded here (kernels/native.py warns once with the cause)."""
        self.own_kernels = bool(enabled)
        return self.use_own_kernels() == self.own_kernels

    def use_own_kernels(self) -> bool:
        """Asked for and available (the first call builds or loads the library)."""
        return self.own_kernels and native.available()

    def sync_config(self) -> None:
        """Our passes are in their slots iff installed or built-ins off; the user's passes stay."""
        want = self.installed or self.builtins_off
        for slot, ours in (("joint_custom_pre_pass", self.pass_), ("joint_custom_post_pass", self.attention_pass)):
            current = _as_list(getattr(config, slot))
            if want and ours not in current:
                self.user_values[slot] = getattr(config, slot)
                setattr(config, slot, current + [ours])
            elif not want and ours in current:
                rest = [p for p in current if p is not ours]
                original = self.user_values.pop(slot, None)
                setattr(config, slot, original if rest == _as_list(original) else (rest or None))

    # --- what the pass reads --------------------------------------------------------------

    def cache_key(self) -> str:
        # the CPU facts decide what fuses (kernels/cpu.py): an artifact built under another
        # ONEDNN_MAX_CPU_ISA cap must not be served here
        return (f"inductor_quant:{source_hash()}:installed={self.installed}:builtins={not self.builtins_off}"
                f":own_kernels={self.use_own_kernels()}:cpu={cpu_info().summary()}")

    def warn_once(self, cause: str, graph: torch.fx.Graph) -> None:
        """One warning per process and cause: "no_freezing" (inference or joint graph),
        "unknown_graph" (input names this code does not know), "saturation" (8 x 8-bit layers
        left in fp32 on a CPU without VNNI), "weights_not_frozen" (freezing only as a compile option)."""
        if cause in self.warned:
            return
        self.warned.add(cause)
        if cause == "unknown_graph":
            names = ", ".join(n.name for n in graph.find_nodes(op="placeholder"))
            message = compat.UNKNOWN_GRAPH_WARNING.format(version=torch.__version__, names=names)
        elif cause == "saturation":
            message = SATURATION_WARNING.format(isa=cpu_info().isa())
        elif cause == "weights_not_frozen":
            message = WEIGHTS_NOT_FROZEN
        else:
            message = NO_FREEZING
        warnings.warn(message, UserWarning, stacklevel=3)

    def reset_warnings(self) -> None:
        self.warned.clear()


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


INSTALLATION = Installation()


def install() -> None:
    """Install our passes into Inductor and switch off torch's built-in int8 conv/linear fusions
    (idempotent). `uninstall()` restores the built-in state found here."""
    INSTALLATION.install()


def uninstall() -> None:
    """Remove our passes from Inductor and put torch's built-in fusions back to their state
    before `install()` (idempotent)."""
    INSTALLATION.uninstall()


def is_installed() -> bool:
    return INSTALLATION.installed


@contextlib.contextmanager
def installed():
    """Install for the duration of a block (restores the previous state)."""
    before = INSTALLATION.installed
    install()
    try:
        yield
    finally:
        if not before:
            uninstall()


def set_own_kernels(enabled: bool) -> bool:
    """Fused int8 convs and linears call our own kernel layer (`iq_onednn.*`: each layer's oneDNN
    primitive built once, the residual conv summed in place) instead of torch's `onednn.*` ops
    (which rebuild it every call). Same numbers. On by default (`INDUCTOR_QUANT_OWN_KERNELS=0`
    starts a process with it off). Returns whether the requested state holds (False: the library
    could not be built or loaded here; one warning said why, torch's ops stay). Compiles after the
    switch see it."""
    return INSTALLATION.set_own_kernels(enabled)


@contextlib.contextmanager
def own_kernels(enabled: bool = True):
    """Our own kernel calls on/off for a block."""
    before = INSTALLATION.own_kernels
    set_own_kernels(enabled)
    try:
        yield INSTALLATION.use_own_kernels() == enabled
    finally:
        INSTALLATION.own_kernels = before


def builtin_fusions_enabled() -> bool:
    return not INSTALLATION.builtins_off


def set_builtin_fusions(enabled: bool) -> None:
    """Switch torch's built-in int8 conv/linear fusions on or off (idempotent).

    `install()` switches them off and `uninstall()` restores the state found at install.
    Switching them on while our passes are installed is allowed, at a risk: they run after ours
    and fuse what we left unfused, including forms we refuse because oneDNN computes them
    wrongly (e.g. per-channel weights on axis 1: wrong outputs, no error), and such layers
    are still reported unfused by `stats()`.
    """
    INSTALLATION.set_builtin_fusions(enabled)


@contextlib.contextmanager
def builtin_fusions(enabled: bool):
    """Temporarily switch torch's built-in int8 conv/linear fusions on/off."""
    before = builtin_fusions_enabled()
    set_builtin_fusions(enabled)
    try:
        yield
    finally:
        set_builtin_fusions(before)


def reset_warning() -> None:
    """Let the once-per-process warnings (no freezing; int8 saturation on this CPU) fire again."""
    INSTALLATION.reset_warnings()


__all__ = ["install", "uninstall", "installed", "is_installed", "freezing_active", "set_builtin_fusions",
           "builtin_fusions", "builtin_fusions_enabled", "set_own_kernels", "own_kernels", "reset_warning", "INSTALLATION"]
