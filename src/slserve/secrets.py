"""Secrets that may rotate while a process lives: an operator puts a new value in Secrets Manager, and a router
environment restored from a SnapStart snapshot taken before that must not keep the old one. A value is read from
its store, kept for `ttl_s`, and read again at once when the peer refuses it (its 401: the secret rotated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_TTL_S = 300.0


class RotatingSecret:
    def __init__(self, read: Callable[[], str], ttl_s: float = DEFAULT_TTL_S) -> None:
        """`read`: the store's current value (a blocking call: run in a worker thread)."""
        self._read = read
        self.ttl_s = ttl_s
        self._value: str | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def fixed(cls, value: str) -> RotatingSecret:
        return cls(lambda: value, ttl_s=float("inf"))

    async def get(self) -> str:
        if self._value is None or time.monotonic() - self._read_at > self.ttl_s:
            await self._refresh()
        assert self._value is not None
        return self._value

    async def refused(self, sent: str) -> str | None:
        """The peer refused `sent`: the store's value now, if it is another one (retry with it), else None."""
        async with self._lock:
            if self._value == sent:  # not already refreshed by another call
                self._value = None
        fresh = await self.get()
        return fresh if fresh != sent else None

    def expire(self) -> None:
        """Read again before the next use (after a snapshot's restore: time in the snapshot does not count)."""
        self._value = None

    async def _refresh(self) -> None:
        async with self._lock:
            if self._value is not None and time.monotonic() - self._read_at <= self.ttl_s:
                return
            self._value = await asyncio.to_thread(self._read)
            self._read_at = time.monotonic()
