"""The state folder's files are its owner's alone: API key hashes, the server secret, and a ledger that keeps
response bodies for idempotent replays.

SQLite creates a database's `-wal` and `-shm` files with the database file's own permissions, so making the
database file owner-only before the first connection covers all three.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

OWNER_ONLY_FILE = 0o600
OWNER_ONLY_DIR = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can list or enter (created if missing, tightened if not)."""
    path.mkdir(parents=True, exist_ok=True, mode=OWNER_ONLY_DIR)
    with contextlib.suppress(PermissionError):  # a folder we do not own (e.g. shared by an admin): leave it be
        os.chmod(path, OWNER_ONLY_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and owner-only if missing; tighten it (and SQLite's companions) if not."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY_FILE))
    for companion in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(companion, OWNER_ONLY_FILE)
    return path


def connect_private(path: Path) -> sqlite3.Connection:
    """An autocommit SQLite connection, usable from any thread, to an owner-only database file."""
    return sqlite3.connect(private_file(path), isolation_level=None, check_same_thread=False)
