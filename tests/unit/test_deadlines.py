"""The gateway's request timeouts: one timer for every request in flight."""

from __future__ import annotations

import asyncio

import pytest

from slserve.gateway.deadlines import Deadlines


async def _slow(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


async def _outcome(deadlines: Deadlines, seconds: float, value: str) -> str:
    try:
        return await deadlines.run(_slow(seconds, value))
    except TimeoutError:
        return "timeout"


def test_each_request_times_out_on_its_own_deadline() -> None:
    async def main() -> list[str]:
        deadlines = Deadlines(0.2)
        first = asyncio.create_task(_outcome(deadlines, 0.01, "fast"))
        second = asyncio.create_task(_outcome(deadlines, 5, "slow"))
        await asyncio.sleep(0.1)  # a later request: its deadline is 0.1 s after the others'
        third = asyncio.create_task(_outcome(deadlines, 0.15, "in time"))
        fourth = asyncio.create_task(_outcome(deadlines, 5, "late"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(first, second, third, fourth)
        assert 0.15 <= loop.time() - started < 1.0  # the late one ended at its own deadline, not at 5 s
        return results

    assert asyncio.run(main()) == ["fast", "timeout", "in time", "timeout"]


def test_requests_after_an_idle_spell_still_time_out() -> None:
    async def main() -> list[str]:
        deadlines = Deadlines(0.05)
        assert await _outcome(deadlines, 0, "quick") == "quick"  # leaves a finished entry and an armed timer
        await asyncio.sleep(0.1)  # the timer fired with nothing live: it must re-arm for the next request
        return [await _outcome(deadlines, 5, "late"), await _outcome(deadlines, 0, "quick")]

    assert asyncio.run(main()) == ["timeout", "quick"]


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def main() -> None:
        deadlines = Deadlines(10)
        task = asyncio.create_task(deadlines.run(_slow(5, "never")))
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away: not a timeout
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_finished_requests_leave_nothing_behind() -> None:
    async def main() -> int:
        deadlines = Deadlines(60)
        slow = asyncio.create_task(deadlines.run(_slow(0.05, "slow")))
        await asyncio.sleep(0)
        for _ in range(100):
            await deadlines.run(_slow(0, "quick"))
        queued_while_slow_runs = len(deadlines._entries)  # the slow one heads the queue: finished ones wait behind
        await slow
        assert len(deadlines._entries) == 0
        return queued_while_slow_runs

    assert asyncio.run(main()) == 101
