"""The switch for torch's built-in quantization fusions (torch/_inductor/fx_passes/quantization.py).

torch 2.13 registers them lazily, on the first compile, into process-global PatternMatcherPass
objects: the weight-prepack/post-op patterns into the freezing passes
(`freezing_patterns.pass_patterns`) and the lowerings of fused int8 ops, int8 pooling/cat/reshape
and weight-only-int8 into the post-grad passes (`post_grad.pass_patterns`).

`set_builtin_fusions(False)` runs those lazy registrations now and takes every pattern entry whose
handler is defined in `quantization.py` out of those passes; `set_builtin_fusions(True)` puts the
same entries back where they were. `install()` switches them off, `uninstall()` restores the
state found at install (install.py). The state is part of our FX-graph-cache key.
"""

from __future__ import annotations

import contextlib

_QUANT_MODULE = "torch._inductor.fx_passes.quantization"
_removed: dict = {}  # (id(pass), key) -> (pass, key, original entry list)


def _global_passes() -> list:
    from torch._inductor.fx_passes import freezing_patterns, post_grad

    freezing_patterns.lazy_init()  # registration happens here on first use; force it now
    post_grad.lazy_init()
    return list(freezing_patterns.pass_patterns) + list(post_grad.pass_patterns)


def _is_builtin_quant(entry) -> bool:
    handler = getattr(entry, "handler", None)
    handler = getattr(handler, "func", handler)
    return getattr(handler, "__module__", None) == _QUANT_MODULE


def builtin_fusions_enabled() -> bool:
    return not _removed


def set_builtin_fusions(enabled: bool) -> None:
    """Switch torch's built-in quantization fusions on or off (idempotent).

    `install()` switches them off and `uninstall()` restores the state found at install.
    Switching them on while our passes are installed is allowed, at a risk: they run after ours
    and fuse what we left unfused, including forms we refuse because oneDNN computes them
    wrongly (e.g. per-channel weights on axis 1: wrong outputs, no error), and such layers
    are still reported unfused by `stats()`.
    """
    from .install import sync_config

    if enabled:
        for p, key, entries in _removed.values():
            p.patterns[key] = entries
        _removed.clear()
    elif not _removed:
        for p in _global_passes():
            for key, entries in list(p.patterns.items()):
                kept = [e for e in entries if not _is_builtin_quant(e)]
                if len(kept) != len(entries):
                    _removed[(id(p), key)] = (p, key, entries)
                    p.patterns[key] = kept
    sync_config()


@contextlib.contextmanager
def builtin_fusions(enabled: bool):
    """Temporarily switch torch's built-in quantization fusions on/off."""
    before = builtin_fusions_enabled()
    set_builtin_fusions(enabled)
    try:
        yield
    finally:
        set_builtin_fusions(before)
