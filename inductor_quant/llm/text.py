"""Natural English for the LLM recipes, from WordNet's noun glosses (inductor_quant/wordnet.py):
"word: definition; \"examples\"" lines, shuffled once with a fixed seed. The first `CALIBRATION`
glosses calibrate (SmoothQuant, observers); evaluation reads the ones after them, so the two
never overlap."""

from __future__ import annotations

import random
from typing import List

from ..wordnet import read_nouns

CALIBRATION = 400  # glosses


def glosses() -> List[str]:
    lines = [f"{word}: {gloss}" for word, gloss in read_nouns(examples=True)]
    random.Random(0).shuffle(lines)
    return lines


def passages(tokenizer, tokens: int, count: int, skip: int = 0) -> List[List[int]]:
    """`count` passages of exactly `tokens` token ids each (BOS first), from the glosses after the
    first `skip` (calibration: skip=0, count small; evaluation: skip=CALIBRATION)."""
    out, lines = [], glosses()[skip:]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    current = list(bos)
    for line in lines:
        current += tokenizer(line + "\n", add_special_tokens=False).input_ids
        while len(current) >= tokens:
            out.append(current[:tokens])
            if len(out) == count:
                return out
            current = bos + current[tokens:]
    raise ValueError(f"WordNet has fewer than {count} passages of {tokens} tokens after {skip} glosses")
