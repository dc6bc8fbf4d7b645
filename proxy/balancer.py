"""Choosing a real server among the eligible ones: weighted round robin, or weighted least connection.

Pure objects, no I/O. Both are handed the eligible servers for each pick (healthy, online, weight > 0),
so health and admin changes need no bookkeeping here.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from hapair.config import BalanceMode


class Candidate(Protocol):
    label: str
    weight: int
    active: int


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: exact weight ratios over each cycle of sum(weights) picks,
    with the picks of a heavy server spread through the cycle instead of bunched together."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Candidate]) -> Candidate | None:
        best, total, current = None, 0, self._current
        best_weight = 0
        for c in candidates:
            w = current.get(c.label, 0) + c.weight
            current[c.label] = w
            total += c.weight
            if best is None or w > best_weight:
                best, best_weight = c, w
        if best is not None:
            current[best.label] = best_weight - total
        return best

    def forget(self, label: str) -> None:
        self._current.pop(label, None)


class WeightedLeastConnection:
    """The server with the fewest active connections per unit of weight; ties go round the ring so that
    an idle pool still spreads its clients."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Candidate]) -> Candidate | None:
        if not candidates:
            return None
        n = len(candidates)
        self._turn = (self._turn + 1) % n
        best, best_key = None, None
        for i in range(n):
            c = candidates[(self._turn + i) % n]
            key = c.active * 1_000_000 // c.weight
            if best_key is None or key < best_key:
                best, best_key = c, key
        return best

    def forget(self, label: str) -> None:
        pass


def make_balancer(mode: BalanceMode) -> SmoothWeightedRoundRobin | WeightedLeastConnection:
    if mode is BalanceMode.WEIGHTED_LEAST_CONNECTION:
        return WeightedLeastConnection()
    return SmoothWeightedRoundRobin()
