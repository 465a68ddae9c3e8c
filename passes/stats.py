"""Counts per fusion id and the quantized conv/linear left unfused (with the reason).

Users and tests read the same numbers: `inductor_quant.passes.stats()` / `reset_stats()`.
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class Stats:
    fused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unfused: list = dataclasses.field(default_factory=list)  # [(op, node name, reason)]

    def as_dict(self) -> dict:
        return {"fused": dict(self.fused), "unfused": list(self.unfused)}


_STATS = Stats()


def count(fusion_id: str) -> None:
    _STATS.fused[fusion_id] += 1


def unfused(op: str, name: str, reason: str) -> None:
    _STATS.unfused.append((op, name, reason))


def stats() -> dict:
    """{"fused": {fusion id: count}, "unfused": [(op, node, reason), ...]} since the last reset."""
    return _STATS.as_dict()


def reset_stats() -> None:
    _STATS.fused.clear()
    _STATS.unfused.clear()
