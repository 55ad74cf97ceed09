"""What every gateway process of a fleet shares, beside the ledger: Idempotency-Key claims and monthly quota
counters. A fleet is several router environments on Lambda, or several gateway processes on one state folder;
whichever takes a request, its replay and its quota are the same.

- **Claims.** Before a request with an Idempotency-Key runs, it claims (API key, Idempotency-Key) in the store
  with a lease (the request timeout and a margin): one conditional write. A stored answer wins over any claim
  (replayed); a live claim of another request means "in progress" (the caller waits and asks again); an expired
  lease (its holder died) can be taken over. The holder's answer is stored with its ledger record; on failure
  the holder drops its claim, and the next one in line runs.
- **Quotas.** A key's charged requests this month are one counter in the store, taken atomically before a request
  runs (refused at the quota) and given back when the request ends uncharged. A counter a month has not seen yet
  starts from the ledger's own count for that month, so a ledger older than the counters keeps its quota. A
  process that dies between the two leaves one unit taken: the key is refused one request early, never admitted
  one request too many.

`SQLiteFleetState` keeps both in the ledger's own file (`claims`, `quota_usage`), each decision one `BEGIN
IMMEDIATE` transaction; DynamoDB's is `slserve.metering.dynamo_fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from slserve.errors import LedgerUnavailable
from slserve.metering.ledger import connect, stored_answer
from slserve.metering.records import StoredResponse

LEASE_MARGIN_S = 30.0  # beyond the request timeout: a live holder never loses its claim


@dataclass(frozen=True)
class ClaimOutcome:
    """`claimed`: this request holds the key and runs. Else `stored` is the earlier answer to replay, or None
    while another request holds it."""

    claimed: bool
    stored: StoredResponse | None = None


class FleetState(Protocol):
    async def claim(self, key_id: str, idempotency_key: str, request_id: str, lease_s: float) -> ClaimOutcome: ...

    async def release(self, key_id: str, idempotency_key: str, request_id: str) -> None:
        """The holder is done (its answer, if any, is stored already): its claim is dropped."""
        ...

    async def take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool:
        """Count one request against the key's quota for the month starting at `month`; False (nothing counted)
        when the quota is used up."""
        ...

    async def return_quota(self, key_id: str, month: float) -> None:
        """A request counted by `take_quota` ended uncharged."""
        ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, request_id TEXT NOT NULL, lease_until_us INTEGER NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_usage (
    key_id TEXT NOT NULL, month_us INTEGER NOT NULL, used INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (key_id, month_us)
) WITHOUT ROWID;
"""


class SQLiteFleetState:
    """Claims and quota counters in the ledger's database: every process on the state folder sees one truth."""

    def __init__(self, path: Path, retention_s: float) -> None:
        self.retention_s = retention_s
        self.db = connect(path)
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one transaction at a time on this connection

    async def claim(self, key_id: str, idempotency_key: str, request_id: str, lease_s: float) -> ClaimOutcome:
        return await asyncio.to_thread(self._claim, key_id, idempotency_key, request_id, lease_s)

    def _claim(self, key_id: str, idempotency_key: str, request_id: str, lease_s: float) -> ClaimOutcome:
        now_us = int(time.time() * 1e6)
        with self._immediate():  # the stored answer and the claim are read and written as one
            stored = stored_answer(self.db, key_id, idempotency_key, self.retention_s)
            if stored is not None:
                return ClaimOutcome(False, stored)
            held = self.db.execute(
                "SELECT request_id FROM claims WHERE key_id=? AND idempotency_key=? AND lease_until_us>?",
                (key_id, idempotency_key, now_us),
            ).fetchone()
            if held is not None and held[0] != request_id:
                return ClaimOutcome(False)
            self.db.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                (key_id, idempotency_key, request_id, now_us + int(lease_s * 1e6)),
            )
            return ClaimOutcome(True)

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise LedgerUnavailable(f"the ledger is busy ({e}); retry") from None
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    async def release(self, key_id: str, idempotency_key: str, request_id: str) -> None:
        await asyncio.to_thread(
            self._execute,
            "DELETE FROM claims WHERE key_id=? AND idempotency_key=? AND request_id=?",
            (key_id, idempotency_key, request_id),
        )

    async def take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool:
        return await asyncio.to_thread(self._take_quota, key_id, month, month_end, quota)

    def _take_quota(self, key_id: str, month: float, month_end: float, quota: int) -> bool:
        month_us = int(month * 1e6)
        with self._immediate():
            self.db.execute(  # a month's first request: the counter starts from the ledger's count
                "INSERT OR IGNORE INTO quota_usage SELECT ?, ?, count(*) FROM records"
                " WHERE key_id=? AND time_us>=? AND time_us<? AND (status=200 OR price>0)",
                (key_id, month_us, key_id, month_us, int(month_end * 1e6)),
            )
            taken = self.db.execute(
                "UPDATE quota_usage SET used = used + 1 WHERE key_id=? AND month_us=? AND used < ?",
                (key_id, month_us, quota),
            ).rowcount
            return bool(taken == 1)

    async def return_quota(self, key_id: str, month: float) -> None:
        await asyncio.to_thread(
            self._execute,
            "UPDATE quota_usage SET used = used - 1 WHERE key_id=? AND month_us=? AND used > 0",
            (key_id, int(month * 1e6)),
        )

    def used(self, key_id: str, month: float) -> int | None:
        """The counter as it stands (None: the month has not started counting)."""
        with self._lock:
            row = self.db.execute(
                "SELECT used FROM quota_usage WHERE key_id=? AND month_us=?", (key_id, int(month * 1e6))
            ).fetchone()
        return None if row is None else int(row[0])

    def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            self.db.execute(sql, args)

    def close(self) -> None:
        with self._lock:
            self.db.close()
