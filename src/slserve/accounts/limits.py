"""Per-key limits, enforced before any function work: a token-bucket rate, concurrent requests, a monthly quota.

All state is in this process's memory (one gateway process serves a machine); the quota's starting point each
month comes from the ledger, so a restart does not hand out a fresh quota.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Bucket:
    tokens: float
    updated: float


@dataclass
class Admission:
    """A request let in: `release` it exactly once when it is done, saying whether it was charged."""

    limiter: Limiter
    key: KeyRecord
    month: float | None  # the quota month it counts in (None: the key has no quota)
    released: bool = False

    def release(self, charged: bool) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self, charged)


class Limiter:
    def __init__(self, charged_in_month: Callable[[str, float, float], int]) -> None:
        """`charged_in_month(key_id, start, end)`: charged requests the ledger holds for the key in that span."""
        self._charged_in_month = charged_in_month
        self._buckets: dict[str, Bucket] = {}
        self._in_flight: dict[str, int] = {}
        self._used: dict[tuple[str, float], int] = {}  # (key, month start) -> charged + in flight

    def admit(self, key: KeyRecord, now: float | None = None) -> Admission:
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
        month = None
        if key.quota_per_month is not None:  # the calendar is read only for keys with a quota
            wall = time.time()
            month, month_end = month_bounds(wall)
            used = self._used_this_month(key, month, month_end)
            if used >= key.quota_per_month:
                raise QuotaExceeded(
                    f"key {key.key_id} has used its quota of {key.quota_per_month} requests this month; "
                    "it renews on the 1st (UTC), or raise the quota with `slserve keys create --quota`",
                    retry_after=month_end - wall,
                )
            self._used[key.key_id, month] = used + 1
        self._in_flight[key.key_id] = self._in_flight.get(key.key_id, 0) + 1
        return Admission(self, key, month)

    def _take_token(self, key: KeyRecord, now: float) -> None:
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

    def _used_this_month(self, key: KeyRecord, month: float, month_end: float) -> int:
        used = self._used.get((key.key_id, month))
        if used is None:
            for stale in [k for k in self._used if k[0] == key.key_id]:  # last month's count
                del self._used[stale]
            used = self._used[key.key_id, month] = self._charged_in_month(key.key_id, month, month_end)
        return used

    def _release(self, admission: Admission, charged: bool) -> None:
        key_id = admission.key.key_id
        self._in_flight[key_id] -= 1
        if not self._in_flight[key_id]:
            del self._in_flight[key_id]
        slot = (key_id, admission.month)
        if admission.month is not None and not charged and slot in self._used:
            self._used[slot] -= 1  # the request was admitted against the quota but not charged: give it back
