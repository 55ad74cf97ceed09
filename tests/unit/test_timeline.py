"""The dashboard's timeline: bounded to its window and, per second, in the latencies it keeps."""

from __future__ import annotations

import pytest

from slserve.platform import timeline as timeline_module
from slserve.platform.timeline import MAX_LATENCIES, Timeline


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_000_000.0]
    monkeypatch.setattr(timeline_module.time, "time", lambda: now[0])
    return now


def test_recent_counts_requests_errors_latencies_and_cold_starts(clock: list[float]) -> None:
    line = Timeline()
    for latency_s in (0.010, 0.010, 0.030):
        line.answered("f", 200, latency_s, None)
    line.answered("f", 503, 0.001, 120.0)
    clock[0] += 1
    recent = line.recent(60)["f"]
    assert (recent["requests"], recent["errors"], recent["cold_starts"]) == (4, 1, 1)
    assert recent["p50_ms"] == 10.0 and recent["p99_ms"] == 30.0
    series = line.series(step_s=5)["functions"]["f"]
    assert sum(series["errors"]) == 1 and sum(series["cold_starts"]) == 1


def test_it_keeps_the_seconds_of_its_window_and_no_more(clock: list[float]) -> None:
    line = Timeline(window_s=10)
    for _ in range(25):
        line.answered("f", 200, 0.005, None)
        clock[0] += 1
    assert len(line._seconds) == 10
    assert line.recent(60)["f"]["requests"] == 10


def test_latencies_kept_per_second_stay_bounded(clock: list[float]) -> None:
    line = Timeline()
    for _ in range(2 * MAX_LATENCIES):
        line.answered("f", 200, 0.001, None)
    second = line._seconds[0][1]["f"]
    assert second.requests == 2 * MAX_LATENCIES and len(second.latencies_ms) == MAX_LATENCIES
