"""Kernels torch 2.13 lacks for our ops, registered when our passes install and removed when
they uninstall.

They change no numerics: they give the compile the right shapes. `register_fake_prepacks`
returns a handle whose `undo()` puts torch back as it was; the installation
(passes/install.py) keeps it, so no state lives here. (torch's meta kernel for the 1-D int8
conv computes a wrong length; rather than override it, the passes emit 1-D convs in their 2-D
form: graph_rewrites.lift_conv1d.)
"""

from __future__ import annotations

import dataclasses

import torch

from .onednn import PREPACKS, packed_dtype, packed_shape


@dataclasses.dataclass
class Registration:
    """What one register_* call added to torch: a library of kernels (new ones only: torch's
    own kernels are never overridden, since a dispatcher entry overridden from Python kept
    answering after its library was destroyed, on torch 2.13)."""

    lib: torch.library.Library

    def undo(self) -> None:
        self.lib._destroy()


def register_fake_prepacks() -> Registration:
    """Fake (meta) kernels for the prepack ops, which torch 2.13 lacks.

    Our prepack nodes sit in the graph through the freezing stage's fake-tensor propagation
    until constant folding evaluates them on the real int8 weights.
    """
    lib = torch.library.Library("onednn", "FRAGMENT")  # noqa: TOR901
    for op in PREPACKS:
        def fake(w, *args, _op=op, **kwargs):
            return w.new_empty(packed_shape(_op, w.shape), dtype=packed_dtype(_op, w.dtype))

        torch.library.register_fake(op, fake, lib=lib)
    return Registration(lib)
