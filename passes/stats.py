"""Counts per fusion id and the quantized ops left in fp32 (with the reason).

Users and tests read the same numbers: `inductor_quant.passes.stats()` / `reset_stats()`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import NamedTuple


class Unfused(NamedTuple):
    """A quantized op computed in fp32 between its dequantize and quantize."""

    op: str      # conv | linear | bmm | pool | cat | view | permute
    node: str    # the graph node's name
    reason: str  # for people: the refusing rule's id and its words
    code: str    # stable: a `passes.reasons.Why` member name in lower case


@dataclasses.dataclass
class Stats:
    fused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unfused: list = dataclasses.field(default_factory=list)  # [Unfused]
    kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # own kernel calls

    def as_dict(self) -> dict:
        return {"fused": dict(self.fused), "unfused": list(self.unfused), "kernels": dict(self.kernels)}


_STATS = Stats()


def count(fusion_id: str) -> None:
    _STATS.fused[fusion_id] += 1


def count_kernel(op: str) -> None:
    """A fused op that calls our own kernel layer (`iq_onednn.<op>`, passes/own_calls.py)."""
    _STATS.kernels[op] += 1


def unfused(op: str, name: str, reason) -> Unfused:
    """Record a quantized op left in fp32; `reason`: a `passes.reasons.Reason`."""
    entry = Unfused(op, name, reason.text, reason.why.code)
    _STATS.unfused.append(entry)
    return entry


def stats() -> dict:
    """{"fused": {fusion id: count}, "unfused": [Unfused(op, node, reason, code), ...],
    "kernels": {our kernel op: calls emitted}} since the last reset."""
    return _STATS.as_dict()


def reset_stats() -> None:
    _STATS.fused.clear()
    _STATS.unfused.clear()
    _STATS.kernels.clear()


@contextlib.contextmanager
def isolated_stats():
    """Count into fresh stats inside the block and give the caller's back after it (a report
    compiles a model of its own and must not touch the user's counts)."""
    global _STATS
    saved, _STATS = _STATS, Stats()
    try:
        yield
    finally:
        _STATS = saved
