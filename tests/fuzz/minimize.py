"""Shrink a failing spec: keep dropping parts while it still fails the same way.

Moves, tried greedily until none applies: keep a single output; bypass an op (its users read its
first input instead, when the shapes allow); then ops no output depends on are removed.
"""

from __future__ import annotations

import copy

import torch

import harness
from graphs import SpecModel, inputs


def _prune(spec: dict) -> dict:
    """Drop ops no output depends on and renumber the values."""
    live = set(spec["outputs"])
    for i in range(len(spec["ops"]) - 1, -1, -1):
        if i + 1 in live:
            live.update(spec["ops"][i]["in"])
    keep = [i for i in range(len(spec["ops"])) if i + 1 in live]
    new_id = {0: 0, **{old + 1: new + 1 for new, old in enumerate(keep)}}
    out = copy.deepcopy(spec)
    out["ops"] = [{**spec["ops"][i], "in": [new_id[v] for v in spec["ops"][i]["in"]]} for i in keep]
    out["outputs"] = [new_id[v] for v in spec["outputs"]]
    return out


def _bypass(spec: dict, k: int) -> dict:
    """Op k's users (and outputs) read op k's first input instead."""
    out = copy.deepcopy(spec)
    src = spec["ops"][k]["in"][0]
    swap = lambda v: src if v == k + 1 else v  # noqa: E731
    for op in out["ops"]:
        op["in"] = [swap(v) for v in op["in"]]
    out["outputs"] = list(dict.fromkeys(swap(v) for v in out["outputs"]))
    return _prune(out)


def _valid(spec: dict) -> bool:
    if not spec["ops"] or not any(op["op"] in ("conv", "linear") for op in spec["ops"]):
        return False
    try:
        with torch.no_grad():
            SpecModel(spec)(inputs(spec))
        return True
    except Exception:  # noqa: BLE001 - a bypass that breaks shapes is simply not a candidate
        return False


def _smaller(spec: dict):
    if len(spec["outputs"]) > 1:
        for o in spec["outputs"]:
            yield _prune({**spec, "outputs": [o]})
    for k in range(len(spec["ops"]) - 1, -1, -1):
        yield _bypass(spec, k)


def minimize(spec: dict, config: harness.Config, failure: harness.Outcome, budget: int = 25) -> dict:
    """The smallest spec found (at most `budget` re-checks) that still fails like `failure`."""
    best = _prune(spec)
    tries = 0
    progress = True
    while progress and tries < budget:
        progress = False
        for cand in _smaller(best):
            if tries >= budget or not _valid(cand) or len(cand["ops"]) >= len(best["ops"]) and cand["outputs"] == best["outputs"]:
                continue
            tries += 1
            if harness.same_failure(failure, harness.check(cand, config)):
                best, progress = cand, True
                break
    return best
