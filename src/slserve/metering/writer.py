"""The ledger's writer process: `python -m slserve.metering.writer LEDGER.sqlite`.

It reads groups of records from stdin, writes every group already waiting in one SQLite transaction (WAL,
`synchronous=FULL`: one fsync makes them all durable), and then acknowledges them on stdout. The gateway
answers a request only after its group is acknowledged.

Why a process: the gateway's event loop is the busiest thread of the house; SQLite's work (binding, B-trees,
fsync) runs here, on another core, in parallel. When the gateway goes away (even by kill -9), stdin ends:
what arrived is committed, then the writer exits.

Frames, both ways: u32 length, then the payload.
    gateway -> writer: u64 group sequence number, u32 n, n bytes of JSON rows (records), JSON [responses]
    writer -> gateway: u64 first sequence, u64 last sequence, u8 ok, then an error message if not ok
"""

from __future__ import annotations

import base64
import os
import select
import sqlite3
import struct
import sys
from pathlib import Path
from typing import BinaryIO

import orjson
from setproctitle import setproctitle

from slserve.framing import LENGTH, FrameAssembler

SEQ = struct.Struct("<Q")
ACK = struct.Struct("<QQB")


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
) -> str | None:
    """One transaction for all `groups`; None when committed, else what went wrong (nothing was written)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for payload in groups:
            (n,) = LENGTH.unpack_from(payload, SEQ.size)
            start = SEQ.size + LENGTH.size
            db.execute(insert_records, (payload[start : start + n].decode(),))
            responses = orjson.loads(payload[start + n :])
            if responses:
                for row in responses:
                    row[-1] = base64.b64decode(row[-1])
                db.executemany(insert_response, responses)
        db.execute("COMMIT")
    except sqlite3.Error as e:
        if db.in_transaction:
            db.execute("ROLLBACK")
        return f"{type(e).__name__}: {e}"
    return None


def serve(path: Path, source: int, sink: BinaryIO) -> None:
    from slserve.metering.ledger import INSERT_RECORDS, INSERT_RESPONSE, SCHEMA, connect

    db = connect(path)
    db.executescript(SCHEMA)
    reader = FrameReader(source)
    while True:
        groups = reader.take()
        if groups:
            error = write_groups(db, groups, INSERT_RECORDS, INSERT_RESPONSE)
            first, last = SEQ.unpack_from(groups[0])[0], SEQ.unpack_from(groups[-1])[0]
            message = (error or "").encode()
            sink.write(LENGTH.pack(ACK.size + len(message)) + ACK.pack(first, last, error is None) + message)
            sink.flush()
        if reader.eof:
            db.close()
            return


def main() -> None:
    setproctitle(f"slserve ledger writer ({sys.argv[1]})")
    serve(Path(sys.argv[1]), sys.stdin.fileno(), sys.stdout.buffer)


if __name__ == "__main__":
    main()
