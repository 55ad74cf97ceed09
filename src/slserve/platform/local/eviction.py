"""Which idle instances go when memory is short: Greedy-Dual-Size-Frequency, keep-alive treated as caching
(FaasCache, ASPLOS'21).

Each function has a priority, set when it is called: the clock + how often it was called x the cold start its
next caller would pay again / the memory an instance holds. The lowest go first; each eviction moves the clock up
to what it evicted, so a function not called since then ages below those called after. No clock of time here:
only calls and evictions move it, so the policy is tested by calling it.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1 << 20


@dataclass(frozen=True)
class Idle:
    """An idle instance that could be stopped."""

    function: str
    number: int
    frees: int  # bytes stopping it would free (its private memory)
    idle_since: float  # ties between equal priorities: the longest idle goes first


class GreedyDual:
    def __init__(self) -> None:
        self.clock = 0.0
        self.calls: dict[str, int] = {}
        self.priorities: dict[str, float] = {}

    def called(self, function: str, cold_start_ms: float, size: int) -> None:
        """A call of `function`, whose cold start costs `cold_start_ms` and whose instance holds `size` bytes."""
        calls = self.calls.get(function, 0) + 1
        self.calls[function] = calls
        self.priorities[function] = self.clock + calls * max(cold_start_ms, 1.0) / max(size / MB, 1.0)

    def priority(self, function: str) -> float:
        return self.priorities.get(function, self.clock)

    def victims(self, idle: list[Idle], need: int) -> list[Idle] | None:
        """The fewest lowest-priority instances whose memory together covers `need` bytes, or None (and nothing
        chosen) when all of them would not; the clock moves up to the highest priority chosen."""
        chosen = cover(sorted(idle, key=lambda i: (self.priority(i.function), i.idle_since)), need)
        if chosen:
            self.clock = max(self.clock, max(self.priority(c.function) for c in chosen))
        return chosen


def longest_idle(idle: list[Idle], need: int) -> list[Idle] | None:
    """The fixed policy's victims: the longest idle first (least recently used)."""
    return cover(sorted(idle, key=lambda i: i.idle_since), need)


def cover(ordered: list[Idle], need: int) -> list[Idle] | None:
    """The first of `ordered` whose memory together covers `need` bytes; None when all of them would not."""
    chosen: list[Idle] = []
    freed = 0
    for candidate in ordered:
        if freed >= need:
            break
        chosen.append(candidate)
        freed += candidate.frees
    return chosen if freed >= need else None
