"""The ledger: one record per request that reached a function, durable before its response is sent.

Durability without a bottleneck is group commit: requests hand their records to one writer thread and wait;
the writer takes every record waiting, writes them in one transaction, and one fsync (SQLite WAL,
`synchronous=FULL`) makes the whole group durable; then every waiting request is answered. Under load a group
holds as many records as arrived during the previous commit, so fsyncs per second stay flat while records per
second grow.

Crash safety follows from the order: commit, then respond. A request whose client saw a success is in the
ledger; one that crashed before its commit was never answered, so the client retries it (with the same
`Idempotency-Key`, answered from the ledger if the first attempt did commit). The request id is the primary
key, so a record is never written twice.

`Ledger` is the seam other targets implement (DynamoDB on AWS); `SQLiteLedger` is the local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Protocol

import orjson

from slserve.errors import LedgerUnavailable


@dataclass(frozen=True, slots=True)
class Record:
    request_id: str
    time_us: int  # unix microseconds
    key_id: str
    tenant: str
    endpoint: str  # "v2" or "openai"
    model: str
    version: str
    alias: str | None
    tier: str
    function: str
    instance: str | None
    cold_start: bool
    cold_start_ms: float | None
    queue_ms: float | None
    compute_ms: float | None
    input_bytes: int
    output_bytes: int
    batch_size: int | None
    tokens: int | None
    status: int
    price: int  # micro-units of currency; 0 unless status is 200
    fallback: str | None = None


COLUMNS = [f.name for f in fields(Record)]


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for `Idempotency-Key` replays."""

    request_id: str
    fingerprint: str  # of the request: a reused key with another request is refused
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class UsageRow:
    model: str
    version: str
    tier: str
    requests: int  # charged
    failed: int  # recorded, not charged
    compute_ms: float
    tokens: int
    charged: int  # micro-units


class Ledger(Protocol):
    async def append(self, record: Record, response: tuple[str, str, StoredResponse] | None = None) -> None:
        """Make `record` durable (and `response` under (key id, idempotency key), in the same transaction);
        return once it is. Raises LedgerUnavailable when it cannot be."""
        ...

    def stored_response(self, key_id: str, idempotency_key: str) -> StoredResponse | None: ...

    def charged_in_month(self, key_id: str, start: float, end: float) -> int: ...

    def usage(
        self, start: float, end: float, tenant: str | None = None, key_id: str | None = None
    ) -> list[UsageRow]: ...

    def stats(self) -> dict[str, float]:
        """pending records, records and commits so far, the last group's size and lag (enqueue to durable)."""
        ...

    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    request_id TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL, key_id TEXT NOT NULL, tenant TEXT NOT NULL, endpoint TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, alias TEXT, tier TEXT NOT NULL, function TEXT NOT NULL,
    instance TEXT, cold_start INTEGER NOT NULL, cold_start_ms REAL, queue_ms REAL, compute_ms REAL,
    input_bytes INTEGER NOT NULL, output_bytes INTEGER NOT NULL, batch_size INTEGER, tokens INTEGER,
    status INTEGER NOT NULL, price INTEGER NOT NULL CHECK (price >= 0), fallback TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_tenant ON records (tenant, time_us);
CREATE INDEX IF NOT EXISTS records_by_key ON records (key_id, time_us);
CREATE TABLE IF NOT EXISTS responses (
    key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, request_id TEXT NOT NULL REFERENCES records,
    fingerprint TEXT NOT NULL, status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
) WITHOUT ROWID;
"""
INSERT_RECORD = f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_RESPONSE = "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)"

Pending = tuple[Record, tuple[str, str, StoredResponse] | None, asyncio.Future[None], float]


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk: the response that follows is never unbilled
    db.execute("PRAGMA busy_timeout=10000")
    return db


class SQLiteLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._reader = connect(path)
        self._reader.executescript(SCHEMA)
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._pending = 0
        self._records = 0
        self._commits = 0
        self._last_group = 0
        self._last_lag_s = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="slserve-ledger", daemon=True)
        self._writer.start()

    async def append(self, record: Record, response: tuple[str, str, StoredResponse] | None = None) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._queue.put((record, response, future, time.monotonic()))
        await asyncio.shield(future)  # a client that goes away does not un-write its record

    def _write_loop(self) -> None:
        db = connect(self.path)
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            error = self._commit(db, group)
            lag = time.monotonic() - group[0][3]
            self._settle(group, error, lag)
            if stop:
                return

    def _commit(self, db: sqlite3.Connection, group: list[Pending]) -> Exception | None:
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT_RECORD, [astuple(r) for r, _, _, _ in group])
            responses = [
                (key_id, idem, s.request_id, s.fingerprint, s.status, orjson.dumps(s.headers).decode(), s.body)
                for _, kept, _, _ in group
                if kept is not None
                for key_id, idem, s in [kept]
            ]
            if responses:
                db.executemany(INSERT_RESPONSE, responses)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return e
        return None

    def _settle(self, group: list[Pending], error: Exception | None, lag: float) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, _, future, _ in group:
            by_loop.setdefault(future.get_loop(), []).append(future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(self._resolve, futures, error, len(group), lag)

    def _resolve(self, futures: list[asyncio.Future[None]], error: Exception | None, size: int, lag: float) -> None:
        self._pending -= len(futures)
        if error is None:
            self._records += size
            self._commits += 1
            self._last_group, self._last_lag_s = size, lag
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(LedgerUnavailable(f"the billing record could not be written ({error}); retry"))

    def stored_response(self, key_id: str, idempotency_key: str) -> StoredResponse | None:
        row = self._reader.execute(
            "SELECT request_id, fingerprint, status, headers, body FROM responses WHERE key_id=? AND idempotency_key=?",
            (key_id, idempotency_key),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], orjson.loads(row[3]), bytes(row[4]))

    def charged_in_month(self, key_id: str, start: float, end: float) -> int:
        row = self._reader.execute(
            "SELECT count(*) FROM records WHERE key_id=? AND time_us>=? AND time_us<? AND status=200",
            (key_id, int(start * 1e6), int(end * 1e6)),
        ).fetchone()
        return int(row[0])

    def usage(self, start: float, end: float, tenant: str | None = None, key_id: str | None = None) -> list[UsageRow]:
        where, args = ["time_us >= ?", "time_us < ?"], [int(start * 1e6), int(end * 1e6)]
        for column, value in (("tenant", tenant), ("key_id", key_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)  # type: ignore[arg-type]
        rows = self._reader.execute(
            "SELECT model, version, tier, sum(status = 200), sum(status != 200), coalesce(sum(compute_ms), 0),"
            " coalesce(sum(tokens), 0), sum(price) FROM records"
            f" WHERE {' AND '.join(where)} GROUP BY model, version, tier ORDER BY model, version, tier",
            args,
        )
        return [UsageRow(*row) for row in rows]

    def stats(self) -> dict[str, float]:
        return {
            "pending": self._pending,
            "records": self._records,
            "commits": self._commits,
            "last_group": self._last_group,
            "last_lag_s": self._last_lag_s,
        }

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._reader.close()
