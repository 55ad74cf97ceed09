"""Feature tables on SQLite (one file in the state folder), and a bounded, expiring cache in front of any store.

A table is replaced whole by a load (one transaction: a reader sees the old table or the new one, never a mix).
Vectors are float32 blobs, one row per key.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson
from cachetools import TTLCache

from slserve.private import connect_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_tables (
    name TEXT PRIMARY KEY, width INTEGER NOT NULL, columns TEXT NOT NULL, rows INTEGER NOT NULL,
    loaded_at REAL NOT NULL, source TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS features (
    tbl TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
"""
_CHUNK = 500  # keys per query: under SQLite's bound-parameter limit


@dataclass(frozen=True)
class TableInfo:
    name: str
    width: int
    columns: list[str]
    rows: int
    loaded_at: float
    source: str


class FeatureStore(Protocol):
    def get(self, table: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors of the keys the table has (float32, its width each); keys it lacks are left out."""
        ...

    def info(self, table: str) -> TableInfo | None: ...


class SQLiteFeatureStore:
    """Readers (the gateway) never create the file: a gateway whose state folder is read-only, or that has no
    tables, only finds none; the first load (`replace`) creates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _connect(self, create: bool = False) -> sqlite3.Connection | None:
        if self._db is None and (create or self.path.is_file()):
            db = connect_private(self.path)
            db.execute("PRAGMA journal_mode=WAL")  # a load writes while the gateway reads
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def get(self, table: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        db = self._connect()
        found: dict[str, np.ndarray] = {}
        if db is None:
            return found
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            query = f"SELECT key, vector FROM features WHERE tbl = ? AND key IN ({','.join('?' * len(chunk))})"
            rows = db.execute(query, [table, *chunk])
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def info(self, table: str) -> TableInfo | None:
        db = self._connect()
        if db is None:
            return None
        row = db.execute(
            "SELECT name, width, columns, rows, loaded_at, source FROM feature_tables WHERE name = ?", (table,)
        ).fetchone()
        return None if row is None else TableInfo(row[0], row[1], orjson.loads(row[2]), row[3], row[4], row[5])

    def tables(self) -> list[TableInfo]:
        db = self._connect()
        names = [r[0] for r in db.execute("SELECT name FROM feature_tables ORDER BY name")] if db else []
        return [info for name in names if (info := self.info(name)) is not None]

    def replace(self, table: str, keys: Sequence[str], vectors: np.ndarray, columns: list[str], source: str) -> None:
        """The table becomes exactly these rows (in one transaction)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = ((table, k, v.tobytes()) for k, v in zip(keys, vectors, strict=True))
        db = self._connect(create=True)
        assert db is not None
        db.execute("BEGIN IMMEDIATE")  # the connection autocommits otherwise
        try:
            db.execute("DELETE FROM features WHERE tbl = ?", (table,))
            db.executemany("INSERT INTO features VALUES (?, ?, ?)", rows)
            db.execute(
                "INSERT OR REPLACE INTO feature_tables VALUES (?, ?, ?, ?, ?, ?)",
                (table, vectors.shape[1], orjson.dumps(columns).decode(), len(keys), time.time(), source),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CachedFeatures:
    """Recent rows in memory: at most `entries`, each for at most `ttl_s` (a reload is seen within it). Unknown
    keys are not cached: a key loaded since is found at once."""

    def __init__(self, store: FeatureStore, entries: int = 100_000, ttl_s: float = 30.0) -> None:
        self.store = store
        self._rows: TTLCache[tuple[str, str], np.ndarray] = TTLCache(maxsize=entries, ttl=ttl_s)
        self._info: TTLCache[str, TableInfo] = TTLCache(maxsize=1024, ttl=ttl_s)
        self.hits = self.misses = 0

    def get(self, table: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        wanted: list[str] = []
        for key in keys:
            row = self._rows.get((table, key))
            if row is None:
                wanted.append(key)
            else:
                found[key] = row
        self.hits += len(keys) - len(wanted)
        if wanted:
            self.misses += len(wanted)
            fetched = self.store.get(table, wanted)
            for key, row in fetched.items():
                self._rows[(table, key)] = row
            found.update(fetched)
        return found

    def info(self, table: str) -> TableInfo | None:
        """The table's shape (cached like rows; a table not loaded yet is looked for again each time)."""
        info = self._info.get(table)
        if info is None:
            info = self.store.info(table)
            if info is not None:
                self._info[table] = info
        return info
