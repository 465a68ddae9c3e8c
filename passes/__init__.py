"""Inductor pattern passes that rewrite the Q/DQ graph into fused oneDNN int8 ops.

Imported as `inductor_quant.passes`. Importing changes no compiler state; `install()` does.
See install.py for where the passes run, which compiles they rewrite (freezing only), why
installing switches torch's built-in int8 conv/linear fusions off (`set_builtin_fusions(True)`
turns them back on, at a risk documented there) and the cache key; registry.py for the
fusion table and order; docs/ARCHITECTURE.md for the whole picture.

    import inductor_quant.passes as iq_passes
    iq_passes.install()      # convert_pt2e does this; idempotent; torch's own int8 conv/linear
                             # fusions off until uninstall() (which puts them back)
    iq_passes.reset_stats()
    ... torch.compile(model)(x) under torch.no_grad() with torch._inductor.config.freezing = True
    iq_passes.stats()
    # {"fused": {"qconv.prepack": 53, "post.relu": 33, ..., "qlinear.prepack.m1": 1},
    #  "unfused": [("conv" | "linear" | "pool", node name, reason), ...]}

Counts are per fusion id (`fusion_ids()` lists them: fixed by the table, the same on every
torch release), per compile since the last reset.
"""

if __name__ != "inductor_quant.passes":  # imported by a path, not by its one import root
    from inductor_quant.kernels.import_root import shadowed_import_root

    raise shadowed_import_root(__name__)

from .install import (builtin_fusions, builtin_fusions_enabled, install, installed, is_installed, own_kernels,
                      set_builtin_fusions, set_own_kernels, uninstall)
from .registry import fusion_ids
from .stats import isolated_stats, reset_stats, stats

__all__ = [
    "install", "uninstall", "installed", "is_installed",
    "set_builtin_fusions", "builtin_fusions", "builtin_fusions_enabled", "set_own_kernels", "own_kernels",
    "stats", "reset_stats", "isolated_stats", "fusion_ids",
]
