"""The ledger's writer process: `python -m slserve.metering.writer LEDGER.sqlite RETENTION_S`.

It reads groups of records from stdin, writes every group already waiting in one SQLite transaction (WAL,
`synchronous=FULL`: one fsync makes them all durable), and then acknowledges them on stdout. The gateway
answers a request only after its group is acknowledged.

Why a process: the gateway's event loop is the busiest thread of the house; SQLite's work (binding, B-trees,
fsync) runs here, on another core, in parallel. When the gateway goes away (even by kill -9), stdin ends:
what arrived is committed, then the writer exits.

A record that breaks a constraint is refused alone: the transaction is replayed record by record under
savepoints, so the others in its group commit (and it is reported by request id). Stored idempotent answers
older than RETENTION_S are pruned every few minutes, after an acknowledgement.

Frames, both ways: u32 length, then the payload.
    gateway -> writer: u64 group sequence number, u32 n, n bytes of JSON rows (records),
                       JSON {"responses": [...], "corrections": [[status, price, request id], ...]}
    writer -> gateway: u64 first sequence, u64 last sequence, u8 ok, then an error message if not ok, or if ok
                       and some records were refused, JSON {request id: why}
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import signal
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from setproctitle import setproctitle

from slserve.framing import LENGTH, FrameAssembler

SEQ = struct.Struct("<Q")
ACK = struct.Struct("<QQB")
PRUNE_EVERY_S = 300.0


class FrameReader:
    """Whole frames from a pipe: `take()` waits for at least one; every frame already there comes along (so what
    queued up during the last commit goes into the next one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.frames = FrameAssembler()
        self.ready: list[bytearray | bytes] = []
        self.eof = False

    def take(self) -> list[bytearray | bytes]:
        while not self.ready and not self.eof:
            self._read()
        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._read()
        frames, self.ready = self.ready, []
        return frames

    def _read(self) -> None:
        n = os.readv(self.fd, [self.frames.buffer()])
        if n:
            self.ready.extend(self.frames.received(n))
        else:
            self.eof = True


def write_groups(
    db: sqlite3.Connection, groups: list[bytearray | bytes], insert_records: str, insert_response: str
) -> tuple[str | None, dict[str, str]]:
    """One transaction for all `groups`. Returns (None, refused) once committed, where `refused` maps the
    request id of each record that could not be written (it broke a constraint) to why: one bad record never
    costs another its place. Returns (why, {}) when nothing could be committed at all (the disk, not a record)."""
    try:
        try:
            _insert_all(db, groups, insert_records, insert_response)
            db.execute("COMMIT")
            return None, {}
        except sqlite3.IntegrityError:  # some record is bad: find it, keep the others
            db.execute("ROLLBACK")
        refused = _insert_each(db, groups, insert_records, insert_response)
        db.execute("COMMIT")
        return None, refused
    except sqlite3.Error as e:
        if db.in_transaction:
            db.execute("ROLLBACK")
        return f"{type(e).__name__}: {e}", {}


def _parts(payload: bytearray | bytes) -> tuple[bytes, list[list[Any]], list[list[Any]]]:
    """A group's records (a JSON array of rows), its stored responses (rows, body base64-decoded) and its
    corrections ([status, price, request id])."""
    (n,) = LENGTH.unpack_from(payload, SEQ.size)
    start = SEQ.size + LENGTH.size
    rest = orjson.loads(payload[start + n :])
    responses: list[list[Any]] = rest["responses"]
    for row in responses:
        row[-1] = base64.b64decode(row[-1])
    return bytes(payload[start : start + n]), responses, rest["corrections"]


def _correct(db: sqlite3.Connection, corrections: list[list[Any]]) -> None:
    from slserve.metering.ledger import CORRECT

    update, forget = CORRECT
    db.executemany(update, corrections)
    db.executemany(forget, [[c[-1]] for c in corrections])


def _insert_all(db: sqlite3.Connection, groups: list[bytearray | bytes], records: str, response: str) -> None:
    """The fast path: each group's records in one statement (SQLite unpacks the JSON array in C)."""
    db.execute("BEGIN IMMEDIATE")
    for payload in groups:
        rows, responses, corrections = _parts(payload)
        db.execute(records, (rows.decode(),))
        if responses:
            db.executemany(response, responses)
        if corrections:
            _correct(db, corrections)


def _insert_each(
    db: sqlite3.Connection, groups: list[bytearray | bytes], records: str, response: str
) -> dict[str, str]:
    """Each record (with its stored response) under its own savepoint: a record that breaks a constraint is
    rolled back alone and reported."""
    refused: dict[str, str] = {}
    db.execute("BEGIN IMMEDIATE")
    for payload in groups:
        rows, responses, corrections = _parts(payload)
        kept = {row[2]: row for row in responses}  # request id -> its stored response
        for row in orjson.loads(rows):
            request_id = row[0]
            db.execute("SAVEPOINT one")
            try:
                db.execute(records, (orjson.dumps([row]).decode(),))
                if request_id in kept:
                    db.execute(response, kept[request_id])
            except sqlite3.IntegrityError as e:
                db.execute("ROLLBACK TO one")
                refused[request_id] = f"{type(e).__name__}: {e}"
            db.execute("RELEASE one")
        if corrections:
            _correct(db, corrections)
    return refused


def prune_responses(db: sqlite3.Connection, older_than_us: int) -> int:
    """Drop stored idempotent answers of requests made before `older_than_us` (unix microseconds)."""
    cursor = db.execute(
        "DELETE FROM responses WHERE (SELECT time_us FROM records WHERE records.request_id = responses.request_id) < ?",
        (older_than_us,),
    )
    return cursor.rowcount


def serve(path: Path, source: int, sink: BinaryIO, retention_s: float) -> None:
    from slserve.metering.ledger import INSERT_RECORDS, INSERT_RESPONSE, SCHEMA, connect, migrate

    db = connect(path)
    db.executescript(SCHEMA)
    migrate(db)
    reader = FrameReader(source)
    prune_every = min(PRUNE_EVERY_S, retention_s / 4)
    pruned_at = 0.0
    while True:
        groups = reader.take()
        if groups:
            error, refused = write_groups(db, groups, INSERT_RECORDS, INSERT_RESPONSE)
            first, last = SEQ.unpack_from(groups[0])[0], SEQ.unpack_from(groups[-1])[0]
            message = error.encode() if error else orjson.dumps(refused) if refused else b""
            sink.write(LENGTH.pack(ACK.size + len(message)) + ACK.pack(first, last, error is None) + message)
            sink.flush()
            if time.monotonic() - pruned_at >= prune_every:  # after the ack: nobody waits for this
                pruned_at = time.monotonic()
                with contextlib.suppress(sqlite3.Error):  # busy or locked: next time
                    prune_responses(db, int((time.time() - retention_s) * 1e6))
        if reader.eof:
            db.close()
            return


def main() -> None:
    setproctitle(f"slserve ledger writer ({sys.argv[1]})")
    # Ctrl-C and a SIGTERM to the whole process group reach the writer too: it ignores both, so that the records
    # of the work the gateway still drains are written by it; it ends when the gateway closes its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Path(sys.argv[1]), sys.stdin.fileno(), sys.stdout.buffer, float(sys.argv[2]))


if __name__ == "__main__":
    main()
