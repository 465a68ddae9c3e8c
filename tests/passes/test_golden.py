"""Layer a: the traced text of every fusion's pattern, checked against golden files.

A change in torch's decompositions (or in a search function) shows up here first.
Regenerate with IQ_REGEN_GOLDEN=1.
"""

import os
import pathlib

import pytest
from torch._inductor.pattern_matcher import PatternPrettyPrinter

from inductor_quant.passes import registry

GOLDEN = pathlib.Path(__file__).parent / "golden"
FUSIONS = registry.fusions()


@pytest.mark.parametrize("fusion", FUSIONS, ids=[f.id for f in FUSIONS])
def test_pattern_text(fusion):
    text = f"# {fusion.id} (phase {fusion.phase})\n{PatternPrettyPrinter.run(fusion.pattern())}\n"
    path = GOLDEN / f"{fusion.id}.txt"
    if os.environ.get("IQ_REGEN_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file for {fusion.id}; run with IQ_REGEN_GOLDEN=1"
    assert path.read_text() == text, f"pattern drift in {fusion.id}; inspect, then IQ_REGEN_GOLDEN=1"


def test_no_stale_golden_files():
    ids = {f.id for f in FUSIONS}
    stale = [p.stem for p in GOLDEN.glob("*.txt") if p.stem not in ids]
    assert not stale, f"golden files without a fusion: {stale}"
