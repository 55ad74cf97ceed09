"""API keys: who may call, what they may open, and how much.

A key is `sls_<key id>_<secret>`. The key id is public (it names the key in the ledger, logs and the CLI); the
store keeps only an HMAC-SHA256 of the whole key under a server-side secret (a keyed hash: a stolen database
alone cannot confirm a guessed key), compared in constant time. The secret is shown once, when the key is made.

`KeyStore` is the seam other targets implement (DynamoDB on AWS); `SQLiteKeyStore` is the local one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import orjson

from slserve.errors import SpecError
from slserve.private import connect_private, private_dir

PREFIX = "sls"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    secret_hash: bytes = field(repr=False)
    created_at: float
    models: tuple[str, ...] | None = None  # None: every model
    tiers: tuple[str, ...] | None = None  # None: every tier
    default_tier: str | None = None
    rate_per_s: float | None = None  # token bucket refill; None: unlimited
    burst: int | None = None  # bucket size; None: one second's worth of `rate_per_s`
    concurrency: int | None = None
    quota_per_month: int | None = None  # charged requests per calendar month (UTC)
    expires_at: float | None = None
    revoked_at: float | None = None
    admin: bool = False  # may read server status and routes (/slserve/*)
    previous_hash: bytes | None = field(default=None, repr=False)  # the secret before a rotation...
    previous_valid_until: float | None = None  # ...accepted until then

    def matches(self, token_hash: bytes, now: float) -> bool:
        if hmac.compare_digest(self.secret_hash, token_hash):
            return True
        if self.previous_hash is None or self.previous_valid_until is None or now >= self.previous_valid_until:
            return False
        return hmac.compare_digest(self.previous_hash, token_hash)

    def public(self) -> dict[str, object]:
        """Everything but the hashes (for `keys list` and status endpoints)."""
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "created_at": self.created_at,
            "models": list(self.models) if self.models is not None else None,
            "tiers": list(self.tiers) if self.tiers is not None else None,
            "default_tier": self.default_tier,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "concurrency": self.concurrency,
            "quota_per_month": self.quota_per_month,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "admin": self.admin,
        }


def split_token(token: str) -> tuple[str, str] | None:
    """`sls_<key id>_<secret>` -> (key id, secret), or None when it is not shaped like one of our keys."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret:
        return None
    return key_id, secret


class KeyStore(Protocol):
    def hash(self, token: str) -> bytes: ...

    def create(self, record: KeyRecord) -> str:
        """Store a new key (its `key_id` and `secret_hash` are filled in here); return the key, shown once."""
        ...

    def get(self, key_id: str) -> KeyRecord | None: ...

    def list(self, tenant: str | None = None) -> list[KeyRecord]: ...

    def revoke(self, key_id: str) -> KeyRecord: ...

    def rotate(self, key_id: str, grace_s: float) -> str:
        """A new secret for the same key (same id, limits and usage); the old one works for `grace_s` more."""
        ...

    def version(self) -> bytes:
        """An opaque token that changes whenever any process changes the store (cheap: polled per request)."""
        ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    record TEXT NOT NULL,         -- the KeyRecord's public fields as JSON
    secret_hash BLOB NOT NULL,
    previous_hash BLOB
);
CREATE INDEX IF NOT EXISTS keys_by_tenant ON keys (tenant);
"""


def new_token(key_id: str) -> str:
    return f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def keyed_hash(secret: bytes, token: str) -> bytes:
    return hmac.new(secret, token.encode(), hashlib.sha256).digest()


def _server_secret(path: Path) -> bytes:
    """The HMAC key, made once per state folder, readable by its owner only."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


WAL_INDEX_HEADER = 48  # bytes; its change counter moves with every commit (https://www.sqlite.org/walformat.html)


class KeyStoreBase:
    """What every key store does the same way (making, revoking and rotating keys); a store keeps the records
    (`get`, `list`, `_write`) and says when they changed (`version`)."""

    _secret: bytes

    def hash(self, token: str) -> bytes:
        return keyed_hash(self._secret, token)

    def create(self, record: KeyRecord) -> str:
        key_id = secrets.token_hex(6)
        token = new_token(key_id)
        stored = replace(record, key_id=key_id, secret_hash=self.hash(token))
        self._write(stored, insert=True)
        return token

    def revoke(self, key_id: str) -> KeyRecord:
        record = self._existing(key_id)
        revoked = replace(record, revoked_at=record.revoked_at or time.time())
        self._write(revoked)
        return revoked

    def rotate(self, key_id: str, grace_s: float) -> str:
        record = self._existing(key_id)
        if record.revoked_at is not None:
            raise SpecError(f"key {key_id} is revoked; create a new one with `slserve keys create`")
        token = new_token(key_id)
        rotated = replace(
            record,
            secret_hash=self.hash(token),
            previous_hash=record.secret_hash if grace_s > 0 else None,
            previous_valid_until=time.time() + grace_s if grace_s > 0 else None,
        )
        self._write(rotated)
        return token

    def get(self, key_id: str) -> KeyRecord | None:
        raise NotImplementedError

    def _existing(self, key_id: str) -> KeyRecord:
        record = self.get(key_id)
        if record is None:
            raise SpecError(f"no key {key_id!r}; `slserve keys list` shows the keys")
        return record

    def _write(self, record: KeyRecord, insert: bool = False) -> None:
        """Store `record` (`insert`: a new key, never one that exists)."""
        raise NotImplementedError


class SQLiteKeyStore(KeyStoreBase):
    def __init__(self, state: Path) -> None:
        self.path = state / "keys.sqlite"
        self._secret = _server_secret(state / "server-secret")
        self.db = connect_private(self.path)
        wal = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        # The WAL index (`-shm`) exists while any connection is open, and this one stays open.
        self._wal_index = os.open(f"{self.path}-shm", os.O_RDONLY | os.O_CLOEXEC) if wal else None
        if self._wal_index is not None:
            weakref.finalize(self, os.close, self._wal_index)

    def get(self, key_id: str) -> KeyRecord | None:
        row = self.db.execute(
            "SELECT record, secret_hash, previous_hash FROM keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return record_from(*row) if row else None

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        query = "SELECT record, secret_hash, previous_hash FROM keys"
        rows = self.db.execute(query + " WHERE tenant = ?", (tenant,)) if tenant else self.db.execute(query)
        return sorted((record_from(*r) for r in rows), key=lambda k: (k.tenant, k.created_at))

    def version(self) -> bytes:
        """The WAL index header, read without a lock: every commit by any process rewrites it. One pread, where
        `PRAGMA data_version` takes two fcntl locks and a statement.
        A read torn by a commit in progress only reads as a change, which costs one cache refill."""
        if self._wal_index is None:  # a file system without WAL support
            return str(self.db.execute("PRAGMA data_version").fetchone()[0]).encode()
        return os.pread(self._wal_index, WAL_INDEX_HEADER, 0)

    def _write(self, record: KeyRecord, insert: bool = False) -> None:
        values = (record.key_id, record.tenant, record_json(record), record.secret_hash, record.previous_hash)
        verb = "INSERT" if insert else "REPLACE"
        self.db.execute(
            f"{verb} INTO keys (key_id, tenant, record, secret_hash, previous_hash) VALUES (?,?,?,?,?)", values
        )


def record_json(record: KeyRecord) -> str:
    """What a store keeps of a key beside its hashes (every store keeps the same document)."""
    return orjson.dumps({**record.public(), "previous_valid_until": record.previous_valid_until}).decode()


def record_from(public: str, secret_hash: bytes, previous_hash: bytes | None) -> KeyRecord:
    d = orjson.loads(public)
    return KeyRecord(
        key_id=d["key_id"],
        tenant=d["tenant"],
        secret_hash=secret_hash,
        created_at=d["created_at"],
        models=tuple(d["models"]) if d["models"] is not None else None,
        tiers=tuple(d["tiers"]) if d["tiers"] is not None else None,
        default_tier=d["default_tier"],
        rate_per_s=d["rate_per_s"],
        burst=d["burst"],
        concurrency=d["concurrency"],
        quota_per_month=d["quota_per_month"],
        expires_at=d["expires_at"],
        revoked_at=d["revoked_at"],
        admin=d["admin"],
        previous_hash=previous_hash,
        previous_valid_until=d.get("previous_valid_until"),
    )


def new_key(tenant: str, **limits: Any) -> KeyRecord:
    """A record to hand to `KeyStore.create` (which fills in the id and hash)."""
    return KeyRecord(key_id="", tenant=tenant, secret_hash=b"", created_at=time.time(), **limits)


def ensure_dev_key(store: KeyStore, state: Path) -> tuple[str, bool] | None:
    """On the first `slserve serve` over an empty key store: an admin key for local development, saved to
    `<state>/dev-key` (owner-only) so the README's curl can read it. Returns (key, made now), or None when the
    store already had keys and no dev key is saved."""
    path = state / "dev-key"
    if store.list():
        return (path.read_text().strip(), False) if path.is_file() else None
    token = store.create(new_key("dev", admin=True))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True
