"""The last few minutes of each function, second by second, for the dashboard: instances by state and queue depth
(sampled), requests, errors, latencies and cold starts (as requests finish). Bounded in memory: a fixed number
of seconds, and at most `MAX_LATENCIES` latencies kept per function and second.

With several front workers the timeline is the platform process's: each front tells it every request it
answered (`platform.linked.LinkedTimeline`), and the dashboard's view is read from there, whole."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from slserve.platform.base import Platform

WINDOW_S = 300
MAX_LATENCIES = 512  # per function and second: enough for a p99, bounded under any load
STATES = ("starting", "idle", "busy", "draining")


@dataclass
class Second:
    """One function's second."""

    states: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    requests: int = 0
    errors: int = 0  # answered 5xx
    latencies_ms: list[float] = field(default_factory=list)
    cold_starts_ms: list[float] = field(default_factory=list)


class Timelines(Protocol):
    """What the gateway needs of a timeline: requests answered in, the dashboard's view out."""

    def answered(self, function: str, status: int, seconds: float, cold_start_ms: float | None) -> None: ...

    async def run(self, platform: Platform) -> None: ...

    async def view(self) -> dict[str, Any]: ...


class Timeline:
    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self._seconds: deque[tuple[int, dict[str, Second]]] = deque(maxlen=window_s)

    def _now(self, at: float | None = None) -> dict[str, Second]:
        now = int(time.time() if at is None else at)
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append((now, {}))
        return self._seconds[-1][1]

    async def view(self) -> dict[str, Any]:
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's view: the last minute per function, and the whole window in steps."""
        return {"recent": self.recent(60), "timeline": self.series()}

    def answered(self, function: str, status: int, seconds: float, cold_start_ms: float | None) -> None:
        second = self._now().setdefault(function, Second())
        second.requests += 1
        second.errors += status >= 500
        if len(second.latencies_ms) < MAX_LATENCIES:
            second.latencies_ms.append(seconds * 1000)
        if cold_start_ms is not None:
            second.cold_starts_ms.append(cold_start_ms)

    def sample(self, platform: Platform) -> None:
        """Instances by state and queue depth, now."""
        current = self._now()
        for status in platform.status():
            second = current.setdefault(status.name, Second())
            states = dict.fromkeys(STATES, 0)
            for inst in status.instances:
                states[inst.state] = states.get(inst.state, 0) + 1
            second.states, second.queued = states, status.queued

    async def run(self, platform: Platform, every_s: float = 1.0) -> None:
        while True:
            self.sample(platform)
            await asyncio.sleep(every_s)

    def series(self, step_s: int = 5) -> dict[str, Any]:
        """Per function, in steps of `step_s` seconds (oldest first): instances by state and queue depth (the last
        sample in the step), requests per second, errors, p50/p99 latency, cold starts and their p50."""
        last = int(time.time())
        first = last - self.window_s + 1  # the whole window, so that the newest activity sits at the right edge
        start = first - first % step_s
        steps = list(range(start, last + 1, step_s))
        index = {t: i for i, t in enumerate(steps)}
        names = sorted({name for _, functions in self._seconds for name in functions})
        out: dict[str, dict[str, list[Any]]] = {}
        for name in names:
            buckets = [Second() for _ in steps]
            for t, functions in self._seconds:
                s = functions.get(name)
                if s is None or t < start:
                    continue
                b = buckets[index[t - t % step_s]]
                if s.states:
                    b.states, b.queued = s.states, s.queued
                b.requests += s.requests
                b.errors += s.errors
                b.latencies_ms += s.latencies_ms
                b.cold_starts_ms += s.cold_starts_ms
            series: dict[str, list[Any]] = {state: [b.states.get(state, 0) for b in buckets] for state in STATES}
            series["queued"] = [b.queued for b in buckets]
            series["rps"] = [round(b.requests / step_s, 2) for b in buckets]
            series["errors"] = [b.errors for b in buckets]
            series["p50_ms"] = [percentile(b.latencies_ms, 50) for b in buckets]
            series["p99_ms"] = [percentile(b.latencies_ms, 99) for b in buckets]
            series["cold_starts"] = [len(b.cold_starts_ms) for b in buckets]
            series["cold_start_p50_ms"] = [percentile(b.cold_starts_ms, 50) for b in buckets]
            out[name] = series
        return {"t": steps, "step_s": step_s, "functions": out}

    def recent(self, seconds: int = 60) -> dict[str, dict[str, Any]]:
        """Per function over the last `seconds`: requests per second, errors, p50/p99, cold starts."""
        since = int(time.time()) - seconds
        merged: dict[str, Second] = {}
        for t, functions in self._seconds:
            if t <= since:
                continue
            for name, s in functions.items():
                m = merged.setdefault(name, Second())
                m.requests += s.requests
                m.errors += s.errors
                m.latencies_ms += s.latencies_ms
                m.cold_starts_ms += s.cold_starts_ms
        return {
            name: {
                "requests": m.requests,
                "rps": round(m.requests / seconds, 2),
                "errors": m.errors,
                "p50_ms": percentile(m.latencies_ms, 50),
                "p99_ms": percentile(m.latencies_ms, 99),
                "cold_starts": len(m.cold_starts_ms),
                "cold_start_p50_ms": percentile(m.cold_starts_ms, 50),
                "cold_start_max_ms": round(max(m.cold_starts_ms), 1) if m.cold_starts_ms else None,
            }
            for name, m in sorted(merged.items())
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 2)
