"""Per-key limits, enforced before any function work: a token-bucket rate, concurrent requests, a monthly quota.

The rate and the concurrency are counted in one process (`Limiter`): the gateway's, or, with several front
workers, the platform process's, which every worker asks (`platform.linked`); each router environment on Lambda
enforces them on its own share of the traffic (the README's "What a fleet shares" says how to bound them across
a fleet). The monthly quota is counted in the store every process shares
(`QuotaCounter`: the ledger's SQLite file, or DynamoDB): N processes admit exactly the quota, not N times it.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Protocol

from slserve.accounts.keys import KeyRecord
from slserve.errors import QuotaExceeded, RateLimited, SpecError

PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


def parse_rate(text: str) -> float:
    """'50/s', '600/min', '10000/h' -> requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", text)
    if not match or match[2] not in PER or float(match[1]) <= 0:
        raise SpecError(f"rate {text!r} is not like '50/s', '600/min' or '10000/h'")
    return float(match[1]) / PER[match[2]]


def parse_quota(text: str) -> int:
    """'100000/month' (or a bare number) -> charged requests per calendar month."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(?:month|mo))?\s*", text)
    if not match:
        raise SpecError(f"quota {text!r} is not like '100000/month'")
    return int(match[1])


def parse_duration(text: str) -> float | None:
    """'90s', '30m', '12h', '30d' -> seconds; None when `text` is not a duration."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]] if match else None


def parse_expiry(text: str, now: float | None = None) -> float:
    """'30d', '12h' (from now) or an ISO date/time ('2026-12-31', UTC unless it says otherwise) -> unix time."""
    seconds = parse_duration(text)
    if seconds is not None:
        return (time.time() if now is None else now) + seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(f"expiry {text!r} is not like '30d', '12h' or '2026-12-31T00:00'") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def month_bounds(when: float) -> tuple[float, float]:
    """Start and end (unix seconds) of the calendar month (UTC) holding `when`."""
    day = dt.datetime.fromtimestamp(when, dt.UTC)
    start = dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(day.year, day.month)[1]
    return start.timestamp(), (start + dt.timedelta(days=days)).timestamp()


class Limited(Protocol):
    """What a key's rate and concurrency are read from (a `KeyRecord`, or its `KeyLimits` sent elsewhere)."""

    @property
    def key_id(self) -> str: ...

    @property
    def rate_per_s(self) -> float | None: ...

    @property
    def burst(self) -> int | None: ...

    @property
    def concurrency(self) -> int | None: ...


@dataclass(frozen=True)
class KeyLimits:
    key_id: str
    rate_per_s: float | None = None
    burst: int | None = None
    concurrency: int | None = None

    @classmethod
    def of(cls, key: Limited) -> KeyLimits:
        return cls(key.key_id, key.rate_per_s, key.burst, key.concurrency)

    @property
    def limited(self) -> bool:
        return self.rate_per_s is not None or self.concurrency is not None


class Held(Protocol):
    """A request let in by its key's limits: `release` it exactly once when it is done."""

    def release(self) -> None: ...


class Limits(Protocol):
    """Where a key's rate and concurrency are counted (this process, or the platform process of several workers)."""

    async def take(self, key: KeyRecord) -> Held:
        """Let a request in, or raise 429 saying which limit it hit and when to retry."""
        ...


@dataclass
class Bucket:
    tokens: float
    updated: float


@dataclass
class Admission:
    """A request let in: `release` it exactly once when it is done."""

    limiter: Limiter
    key: Limited
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self)


class Limiter:
    """A key's rate (token bucket) and requests in flight, in this process."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}
        self._in_flight: dict[str, int] = {}

    async def take(self, key: KeyRecord) -> Admission:
        return self.admit(key)

    def admit(self, key: Limited, now: float | None = None) -> Admission:
        """Let a request in, or raise 429 saying which limit it hit and when to retry."""
        now = time.monotonic() if now is None else now
        if key.concurrency is not None and self._in_flight.get(key.key_id, 0) >= key.concurrency:
            raise RateLimited(
                f"key {key.key_id} already has {key.concurrency} requests in flight (its concurrency limit); "
                "wait for one to finish",
                retry_after=1.0,
            )
        if key.rate_per_s is not None:
            self._take_token(key, now)
        self._in_flight[key.key_id] = self._in_flight.get(key.key_id, 0) + 1
        return Admission(self, key)

    def _take_token(self, key: Limited, now: float) -> None:
        rate = key.rate_per_s
        assert rate is not None
        size = float(key.burst or max(1, round(rate)))
        bucket = self._buckets.get(key.key_id)
        if bucket is None:
            bucket = self._buckets[key.key_id] = Bucket(size, now)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimited(
                f"key {key.key_id} is limited to {rate:g} requests/s (burst {size:g}); slow down",
                retry_after=(1.0 - bucket.tokens) / rate,
            )
        bucket.tokens -= 1.0

    def _release(self, admission: Admission) -> None:
        key_id = admission.key.key_id
        self._in_flight[key_id] -= 1
        if not self._in_flight[key_id]:
            del self._in_flight[key_id]


class QuotaCounter(Protocol):
    """Charged requests per key and month, counted atomically in a store every process shares."""

    async def take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool: ...

    async def return_quota(self, key_id: str, month: float) -> None: ...


@dataclass
class QuotaHold:
    """One request counted against its key's quota: `settle` it once it is known whether it was charged."""

    counter: QuotaCounter
    key_id: str
    month: float

    async def settle(self, charged: bool) -> None:
        if not charged:  # admitted against the quota but not charged: its unit comes back
            await self.counter.return_quota(self.key_id, self.month)


async def take_quota(counter: QuotaCounter, key: KeyRecord) -> QuotaHold | None:
    """Count a request against the key's monthly quota (None: the key has none), or raise 429 when it is used up."""
    if key.quota_per_month is None:
        return None
    wall = time.time()
    month, month_end = month_bounds(wall)
    if not await counter.take_quota(key.key_id, month, month_end, key.quota_per_month):
        raise QuotaExceeded(
            f"key {key.key_id} has used its quota of {key.quota_per_month} requests this month; "
            "it renews on the 1st (UTC), or raise the quota with `slserve keys create --quota`",
            retry_after=month_end - wall,
        )
    return QuotaHold(counter, key.key_id, month)
