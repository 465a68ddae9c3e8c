"""Inductor pattern passes that rewrite the Q/DQ graph into fused oneDNN int8 ops.

Imported as `inductor_quant.passes`. Importing changes no compiler state; `install()` does.
"""


def install() -> None:
    """Install our passes into Inductor (idempotent). Placeholder until the passes land."""


def uninstall() -> None:
    """Remove our passes from Inductor (idempotent)."""
