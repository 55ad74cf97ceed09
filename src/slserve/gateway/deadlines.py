"""Request timeouts with one timer for all requests.

`asyncio.timeout` starts and closes an event-loop timer per request (on uvloop a libuv handle, costing about as
much as decoding a small request's JSON). Every request here has the same timeout, so deadlines come
in arrival order: a queue of them and one timer armed for the earliest live one cover them all. A request that
finishes marks its entry and drops the finished entries at the head of the queue, so the queue holds about the
requests in flight; the timer is left armed (at concurrency 1 it fires once per timeout, not once per request)
and, when it fires, cancels what is overdue and re-arms for the next live deadline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class _Entry:
    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[object] | None, deadline: float) -> None:
        self.task = task  # None once the request is over
        self.deadline = deadline
        self.expired = False


class Deadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._entries: deque[_Entry] = deque()
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` in the current task; past the timeout it is cancelled and TimeoutError raised."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        entry = _Entry(task, loop.time() + self.timeout_s)
        self._entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._expire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if entry.expired and task is not None and task.uncancel() == 0:
                raise TimeoutError from None
            raise  # cancelled by someone else (the client went away, the server is stopping)
        finally:
            entry.task = None
            entries = self._entries
            while entries and entries[0].task is None:
                entries.popleft()

    def _expire(self) -> None:
        """Cancel every request past its deadline, drop finished ones, arm for the next live deadline."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = self._entries
        while entries:
            entry = entries[0]
            if entry.task is not None and entry.deadline > now:
                self._timer = loop.call_at(entry.deadline, self._expire)
                return
            entries.popleft()
            if entry.task is not None:
                entry.expired = True
                entry.task.cancel()
