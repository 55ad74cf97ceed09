"""The ledger: one record per request that reached a function, durable before its response is sent.

Durability without a bottleneck is group commit in a writer process (`slserve.metering.writer`): a request
appends its record and waits; once per event-loop turn, the records appended during that turn go to the
writer as one group; the writer puts every group waiting into one SQLite transaction (WAL, `synchronous=FULL`:
one fsync makes them all durable) and acknowledges; then every waiting request is answered. Under load a
transaction holds as many records as arrived during the previous one, so commits per second stay flat while
records per second grow.

Why a process: the gateway's event loop is the busiest thread of the house, and SQLite's work (binding rows,
B-trees, fsync) on it was measured to cost a fifth of its throughput; a writer thread was worse (each hand-off
waits for the GIL). In its own process that work runs on another core. This process keeps a read connection
(usage, quotas, idempotent replays); WAL lets it read while the writer writes.

Crash safety follows from the order: commit, then respond. A request whose client saw a success is in the
ledger; one that crashed before its commit was never answered, so the client retries it (with the same
`Idempotency-Key`, answered from the ledger if the first attempt did commit). The request id is the primary
key, so a record is never written twice.

`records.Ledger` is the seam other targets implement (DynamoDB on AWS); `SQLiteLedger` is the local one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from slserve.errors import LedgerUnavailable
from slserve.framing import LENGTH
from slserve.metering.records import COLUMNS, Correction, Record, SpendRow, StoredResponse, UsageRow, itemize, row_of
from slserve.metering.writer import ACK, SEQ
from slserve.private import connect_private

if TYPE_CHECKING:
    pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    request_id TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL, key_id TEXT NOT NULL, tenant TEXT NOT NULL, endpoint TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, alias TEXT, tier TEXT NOT NULL, function TEXT NOT NULL,
    instance TEXT, cold_start INTEGER NOT NULL, cold_start_ms REAL, queue_ms REAL, compute_ms REAL,
    input_bytes INTEGER NOT NULL, output_bytes INTEGER NOT NULL, batch_size INTEGER, tokens INTEGER,
    status INTEGER NOT NULL, price INTEGER NOT NULL CHECK (price >= 0), fallback TEXT, steps TEXT,
    compute_cost INTEGER, trace_id TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_tenant ON records (tenant, time_us);
CREATE INDEX IF NOT EXISTS records_by_key ON records (key_id, time_us);
CREATE TABLE IF NOT EXISTS responses (
    key_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, request_id TEXT NOT NULL REFERENCES records,
    fingerprint TEXT NOT NULL, status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
) WITHOUT ROWID;
"""
# A group's records arrive as one JSON array of rows; SQLite unpacks it (json_each) in C, one bind per group
# instead of one per column per record: the writer's CPU per record was measured to drop by half.
INSERT_RECORDS = (
    f"INSERT INTO records ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(f'value ->> {i}' for i in range(len(COLUMNS)))} FROM json_each(?)"
)
# A stored answer is written only when the gateway found none in force for its key (the key's requests run one
# at a time); one older than the retention may still sit there until the writer prunes it, and is replaced.
INSERT_RESPONSE = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)"
CORRECT = (
    "UPDATE records SET status = ?, price = ? WHERE request_id = ?",
    "DELETE FROM responses WHERE request_id = ?",
)
DEFAULT_RETENTION_S = 24 * 3600.0

Pending = tuple[Record | Correction, tuple[str, str, StoredResponse] | None, asyncio.Future[None], float]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stored_answer(
    db: sqlite3.Connection, key_id: str, idempotency_key: str, retention_s: float
) -> StoredResponse | None:
    """The answer kept for this key, unless it is older than the retention (then the key is free again)."""
    row = db.execute(
        "SELECT r.request_id, r.fingerprint, r.status, r.headers, r.body FROM responses r"
        " JOIN records USING (request_id) WHERE r.key_id=? AND r.idempotency_key=? AND records.time_us >= ?",
        (key_id, idempotency_key, int((time.time() - retention_s) * 1e6)),
    ).fetchone()
    if row is None:
        return None
    return StoredResponse(row[0], row[1], row[2], orjson.loads(row[3]), bytes(row[4]))


def migrate(db: sqlite3.Connection) -> None:
    """Columns added since a ledger was made: added to it, empty for the records it has."""
    have = {row[1] for row in db.execute("PRAGMA table_info(records)")}
    if "steps" not in have:
        db.execute("ALTER TABLE records ADD COLUMN steps TEXT")
    if "compute_cost" not in have:  # ledgers from before prices counted work (their cost was their price)
        db.execute("ALTER TABLE records ADD COLUMN compute_cost INTEGER")
    if "trace_id" not in have:
        db.execute("ALTER TABLE records ADD COLUMN trace_id TEXT")


def connect(path: Path) -> sqlite3.Connection:
    db = connect_private(path)  # it keeps response bodies: owner-only, as the keys
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk: the response that follows is never unbilled
    db.execute("PRAGMA busy_timeout=10000")
    return db


class SQLiteLedger:
    def __init__(self, path: Path, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = path
        self.retention_s = retention_s  # how long stored idempotent answers are replayed
        self.db = connect(path)  # this process reads; the writer process writes
        self.db.executescript(SCHEMA)
        migrate(self.db)
        self._writer: asyncio.subprocess.Process | None = None
        self._start_lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._acks_open = False  # the writer's acknowledgements are still being read
        self._group: list[Pending] = []
        self._flush_scheduled = False
        self._seq = 0
        self._sent: dict[int, list[Pending]] = {}  # group sequence -> its records, until acknowledged
        self._pending = 0
        self._records = 0
        self._commits = 0
        self._last_group = 0
        self._last_lag_s = 0.0

    async def append(self, record: Record, response: tuple[str, str, StoredResponse] | None = None) -> None:
        await self._enqueue(record, response)

    async def correct(self, request_id: str, status: int, price: int) -> None:
        await self._enqueue(Correction(request_id, status, price), None)

    async def _enqueue(self, record: Record | Correction, response: tuple[str, str, StoredResponse] | None) -> None:
        if not self._acks_open:
            await self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._group.append((record, response, future, time.monotonic()))
        self._pending += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # A client that goes away cancels this wait, not the record: it is in the group and will be written.
        await future

    async def _start(self) -> None:
        """Start the writer (the first time, or again after it stopped); concurrent callers start one."""
        async with self._start_lock:
            if self._acks_open:
                return
            old = self._writer
            if old is not None and old.returncode is None and old.stdin is not None:
                old.stdin.close()  # a writer whose acknowledgements stopped: it commits what it has and exits
            try:
                writer = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "slserve.metering.writer",
                    str(self.path),
                    str(self.retention_s),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            except OSError as e:
                raise LedgerUnavailable(f"cannot start the ledger writer: {e}") from None
            self._writer = writer
            self._acks_open = True
            self._reader_task = asyncio.get_running_loop().create_task(self._read_acks(writer))

    def _flush(self) -> None:
        """Send every record appended during this loop turn as one group."""
        self._flush_scheduled = False
        group, self._group = self._group, []
        writer = self._writer
        if not group:
            return
        # Once its acknowledgements stopped (the writer exited, even if not yet reaped), a group sent now would
        # never be settled: its requests would hang holding their concurrency slots.
        if writer is None or writer.stdin is None or not self._acks_open or writer.stdin.is_closing():
            self._fail(group, "the ledger writer is not running")
            return
        self._seq += 1
        records = [row_of(r) for r, _, _, _ in group if isinstance(r, Record)]
        responses = [
            [key_id, idem, s.request_id, s.fingerprint, s.status, orjson.dumps(s.headers).decode(), _b64(s.body)]
            for _, kept, _, _ in group
            if kept is not None
            for key_id, idem, s in [kept]
        ]
        corrections = [[c.status, c.price, c.request_id] for c, _, _, _ in group if isinstance(c, Correction)]
        rows = orjson.dumps(records)
        rest = orjson.dumps({"responses": responses, "corrections": corrections})
        payload = SEQ.pack(self._seq) + LENGTH.pack(len(rows)) + rows + rest
        self._sent[self._seq] = group
        writer.stdin.write(LENGTH.pack(len(payload)) + payload)

    async def _read_acks(self, writer: asyncio.subprocess.Process) -> None:
        assert writer.stdout is not None
        try:
            while True:
                (n,) = LENGTH.unpack(await writer.stdout.readexactly(LENGTH.size))
                ack = await writer.stdout.readexactly(n)
                first, last, ok = ACK.unpack_from(ack)
                detail = bytes(ack[ACK.size :])
                refused: dict[str, str] = orjson.loads(detail) if ok and detail else {}
                for seq in range(first, last + 1):
                    group = self._sent.pop(seq, [])
                    if ok:
                        self._settle(group, refused)
                    else:
                        self._fail(group, detail.decode())
                self._commits += 1 if ok else 0
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:  # the writer is gone: what it did not acknowledge is not known to be durable
            self._acks_open = False
            for seq in sorted(self._sent):
                self._fail(self._sent.pop(seq), "the ledger writer stopped")

    def _settle(self, group: list[Pending], refused: dict[str, str]) -> None:
        if not group:
            return
        self._pending -= len(group)
        self._records += sum(1 for r, _, _, _ in group if isinstance(r, Record)) - len(refused)
        self._last_group, self._last_lag_s = len(group), time.monotonic() - group[0][3]
        for record, _, future, _ in group:
            if future.done():
                continue
            why = refused.get(record.request_id)
            if why is None:
                future.set_result(None)
            else:
                future.set_exception(LedgerUnavailable(f"the billing record was refused ({why}); retry"))

    def _fail(self, group: list[Pending], why: str) -> None:
        self._pending -= len(group)
        for _, _, future, _ in group:
            if not future.done():
                future.set_exception(LedgerUnavailable(f"the billing record could not be written ({why}); retry"))

    def stored_response(self, key_id: str, idempotency_key: str) -> StoredResponse | None:
        return stored_answer(self.db, key_id, idempotency_key, self.retention_s)

    def charged_in_month(self, key_id: str, start: float, end: float) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM records WHERE key_id=? AND time_us>=? AND time_us<? AND (status=200 OR price>0)",
            (key_id, int(start * 1e6), int(end * 1e6)),
        ).fetchone()
        return int(row[0])

    def usage(self, start: float, end: float, tenant: str | None = None, key_id: str | None = None) -> list[UsageRow]:
        where, args = ["time_us >= ?", "time_us < ?"], [int(start * 1e6), int(end * 1e6)]
        for column, value in (("tenant", tenant), ("key_id", key_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)  # type: ignore[arg-type]
        rows = self.db.execute(
            "SELECT model, version, tier, sum(status = 200), sum(status NOT IN (200, 499)), sum(status = 499),"
            " coalesce(sum(compute_ms), 0),"
            " coalesce(sum(tokens), 0), sum(price), coalesce(sum(compute_cost), 0) FROM records"
            f" WHERE {' AND '.join(where)} GROUP BY model, version, tier ORDER BY model, version, tier",
            args,
        )
        pipelines = self.db.execute(
            f"SELECT model, version, tier, steps FROM records WHERE {' AND '.join(where)}"
            " AND steps IS NOT NULL AND price > 0",
            args,
        )
        steps = itemize(pipelines)
        return [dataclasses.replace(UsageRow(*row), steps=steps.get(row[:3], ())) for row in rows]

    def spend(self, start: float, end: float) -> list[SpendRow]:
        rows = self.db.execute(
            "SELECT tenant, tier, count(*), sum(price) FROM records WHERE time_us >= ? AND time_us < ?"
            " GROUP BY tenant, tier ORDER BY tenant, tier",
            (int(start * 1e6), int(end * 1e6)),
        )
        return [SpendRow(*row) for row in rows]

    def stats(self) -> dict[str, float]:
        return {
            "pending": self._pending,
            "records": self._records,
            "commits": self._commits,
            "last_group": self._last_group,
            "last_lag_s": self._last_lag_s,
        }

    async def close(self) -> None:
        """Write what is waiting, stop the writer (it commits what it has, then exits), close."""
        if self._group:
            self._flush()
        writer = self._writer
        if writer is not None and writer.stdin is not None and writer.returncode is None:
            writer.stdin.close()
            await writer.wait()
        if self._reader_task is not None:
            await self._reader_task
        self.db.close()
