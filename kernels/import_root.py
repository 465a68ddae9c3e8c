"""The one import root: `kernels/`, `passes/` and `benchmarks/` are importable only as `inductor_quant.*`."""

from __future__ import annotations


def shadowed_import_root(name: str) -> ImportError:
    """The clone's `kernels/`, `passes/` or `benchmarks/` folder was imported as a top-level module.

    Python puts the current directory first on sys.path (`python -m`, `python -c`, the REPL), so
    in the clone's root `import kernels` finds our folder instead of the installed package of that
    name (transformers >= 5.25 imports Hugging Face's `kernels`). Failing here names the cause.
    """
    return ImportError(
        f"`import {name}` found the inductor-quant clone's `{name}/` folder, because Python was started "
        f"in the clone's root (which then comes first on sys.path). That folder is `inductor_quant.{name}`; "
        f"a top-level `{name}` is some other package (transformers >= 5.25 imports Hugging Face's `kernels`). "
        "Fix: run Python from another directory, or start it with `python -P` (PYTHONSAFEPATH=1), "
        "which leaves the current directory off sys.path."
    )
