"""WordNet 3.0 from the Debian package `wordnet-base` (or $WORDNET_DIR): natural English that
installs from a package registry, read by the real-data accuracy checks (MiniLM retrieval,
benchmarks/accuracy/minilm.py) and as the LLM recipes' calibration and evaluation text
(inductor_quant/llm/text.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional

WORDNET_DIR = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
INSTALL = "sh benchmarks/accuracy/install.sh"


def read_nouns(path: Optional[Path] = None, examples: bool = False) -> list[tuple[str, str]]:
    """(head word, definition) per noun synset of WordNet's data.noun (with `examples`, the whole
    gloss: the definition and its quoted example sentences).

    A data line: offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt pointers... | gloss;
    the license header lines start with two spaces. The gloss is "definition; \"example\"; ...".
    """
    path = path or WORDNET_DIR / "data.noun"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run {INSTALL} (apt-get install wordnet-base) or set WORDNET_DIR")
    nouns = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields, _, gloss = line.partition(" | ")
            word = fields.split()[4].replace("_", " ")
            definition = gloss.strip() if examples else gloss.split('; "')[0].strip().rstrip(";").strip()
            if definition:
                nouns.append((word, definition))
    return nouns


def sample(nouns: list[tuple[str, str]], n: int, seed: int = 0, skip: int = 0) -> list[tuple[str, str]]:
    """`n` synsets with distinct head words (case-insensitive), in a seeded random order,
    after the first `skip` such synsets (so calibration and evaluation never overlap)."""
    order = list(range(len(nouns)))
    random.Random(seed).shuffle(order)
    seen, picked = set(), []
    for i in order:
        word = nouns[i][0].lower()
        if word not in seen:
            seen.add(word)
            picked.append(nouns[i])
            if len(picked) == skip + n:
                break
    return picked[skip:]
