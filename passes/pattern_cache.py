"""Our traced patterns kept on disk between processes.

Why: tracing the ~200 search functions of the fusion table with Inductor's decompositions took
2.5-2.6 s of every process that installs our passes (AMD EPYC Zen 4, idle; 0.12 s read from this
file): a user's first compile paid it, and so did every benchmark, fuzz and test process.
A traced pattern is a function of our sources, torch and Python only, so it is written once, as
Inductor writes its own serialized patterns (`PatternPrettyPrinter`: Python expressions of
`CallFunction`, `KeywordArg`, `Ignored`, ...), and later processes evaluate the text instead of
tracing.

Correctness: the file's name is a hash of every Python source of the package (inductor_quant,
its passes and kernels), torch's version and Python's, so any edit or upgrade traces again. A
pattern is written only when its text reads back printing and repr-ing exactly as the traced one
(one the printer cannot express is traced in every process, not cached); a file that cannot be
read or evaluated is ignored and the patterns traced again. Written atomically
(a concurrent process sees no file or a whole one). Beside the native kernels:
`$INDUCTOR_QUANT_CACHE_DIR/patterns/` (kernels/native.py, `cache_root`);
`INDUCTOR_QUANT_PATTERN_CACHE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import pathlib
import sys
import tempfile
from typing import Callable, Optional

import torch

from inductor_quant.kernels import compat
from inductor_quant.kernels.native import cache_root

OP_NAMESPACES = ("aten", "prims", "quantized_decomposed", "onednn", "quantized", "iq_onednn")


def enabled() -> bool:
    return os.environ.get("INDUCTOR_QUANT_PATTERN_CACHE", "1") != "0"


def _package_dirs() -> list[pathlib.Path]:
    import inductor_quant
    import inductor_quant.kernels
    import inductor_quant.passes

    return [pathlib.Path(m.__file__).parent for m in (inductor_quant, inductor_quant.passes, inductor_quant.kernels)]


def key() -> str:
    """A hash of what a traced pattern depends on: our Python sources, torch, Python."""
    h = hashlib.sha256()
    for d in _package_dirs():
        for f in sorted(d.rglob("*.py")):
            h.update(str(f.relative_to(d)).encode())
            h.update(f.read_bytes())
    for part in (torch.__version__, sys.version):
        h.update(part.encode())
    return h.hexdigest()[:20]


def path() -> pathlib.Path:
    return cache_root() / "patterns" / f"{key()}.json"


def _namespace() -> dict:
    pm = compat.pattern_matcher()
    ns = {name: getattr(pm, name) for name in dir(pm) if not name.startswith("__")}
    ns.update(torch=torch, operator=operator, inf=math.inf, nan=math.nan)
    ns.update({name: getattr(torch.ops, name) for name in OP_NAMESPACES})
    return ns


def to_text(pattern) -> Optional[str]:
    """The pattern as Python text, or None when it does not read back as the same pattern."""
    printer = compat.pattern_matcher().PatternPrettyPrinter
    try:
        text = printer.run(pattern, output_name="pattern")
        again = from_text(text)
    except Exception:  # a pattern the printer cannot express: traced in every process
        return None
    return text if printer.run(again, output_name="pattern") == text and repr(again) == repr(pattern) else None


def from_text(text: str, names: Optional[dict] = None):
    scope = dict(names or _namespace())
    exec(compile(text, "<inductor-quant pattern>", "exec"), scope)
    return scope["pattern"]


def _file_texts(file: pathlib.Path) -> dict:
    try:
        texts = json.loads(file.read_text())
        return texts if isinstance(texts, dict) else {}
    except Exception:  # no file or a cut-short one
        return {}


def _store(target: pathlib.Path, texts: dict) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(texts, tmp)
        os.replace(tmp.name, target)
    except OSError:  # a read-only or full cache directory: the patterns are traced next time too
        pass


def patterns_of(traceable: dict[str, Callable[[], object]]) -> dict:
    """id -> pattern: evaluated from the file where it holds the id, else traced; the traced ones
    that read back the same are added to the file."""
    file = path() if enabled() else None  # the sources hashed once
    texts = _file_texts(file) if file else {}
    try:
        names = _namespace()
        patterns = {i: from_text(texts[i], names) for i in traceable if i in texts}
    except Exception:  # text that no longer evaluates: trace everything again
        texts, patterns = {}, {}
    new = {}
    for i, trace in traceable.items():
        if i not in patterns:
            patterns[i] = trace()
            if file and (text := to_text(patterns[i])) is not None:
                new[i] = text
    if new:
        _store(file, {**texts, **new})
    return patterns
