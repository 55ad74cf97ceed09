"""Keys, limits, the ledger and usage reports, in-process."""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slserve.accounts.keys import SQLiteKeyStore, ensure_dev_key, new_key, split_token
from slserve.accounts.limits import (
    Limiter,
    month_bounds,
    parse_duration,
    parse_expiry,
    parse_quota,
    parse_rate,
    take_quota,
)
from slserve.errors import LedgerUnavailable, QuotaExceeded, RateLimited, SpecError, Unauthorized
from slserve.gateway.auth import Authenticator
from slserve.metering.fleet import SQLiteFleetState
from slserve.metering.ledger import SQLiteLedger
from slserve.metering.records import Record
from slserve.metering.usage import money, month_span, report, to_csv


def test_the_store_keeps_only_a_keyed_hash(tmp_path: Path) -> None:
    store = SQLiteKeyStore(tmp_path)
    token = store.create(new_key("acme", models=("minilm",)))
    key_id, secret = split_token(token) or ("", "")
    assert secret and secret.encode() not in (tmp_path / "keys.sqlite").read_bytes()
    record = store.get(key_id)
    assert record is not None and record.models == ("minilm",)
    assert record.matches(store.hash(token), time.time()) and not record.matches(store.hash(token + "x"), time.time())
    assert stat.S_IMODE(os.stat(tmp_path / "server-secret").st_mode) == 0o600
    other = SQLiteKeyStore(tmp_path / "elsewhere")  # another server secret: the same key hashes differently
    assert other.hash(token) != store.hash(token)


def test_revocation_and_rotation_reach_a_running_authenticator(tmp_path: Path) -> None:
    store = SQLiteKeyStore(tmp_path)
    auth = Authenticator(SQLiteKeyStore(tmp_path))  # its own connection, as in the gateway
    token = store.create(new_key("acme"))
    key_id = token.split("_")[1]
    assert auth.authenticate({"authorization": f"Bearer {token}"}).key_id == key_id
    assert auth.authenticate({"x-api-key": token}).key_id == key_id
    rotated = store.rotate(key_id, grace_s=0)
    with pytest.raises(Unauthorized, match="not valid"):
        auth.authenticate({"x-api-key": token})
    assert auth.authenticate({"x-api-key": rotated}).key_id == key_id
    store.revoke(key_id)
    with pytest.raises(Unauthorized, match="revoked"):
        auth.authenticate({"x-api-key": rotated})
    with pytest.raises(SpecError, match="revoked"):
        store.rotate(key_id, 0)


def test_every_commit_by_another_connection_changes_the_store_version(tmp_path: Path) -> None:
    writer, reader = SQLiteKeyStore(tmp_path), SQLiteKeyStore(tmp_path)
    seen = [reader.version()]
    for i in range(60):
        writer.create(new_key("acme"))
        if i % 20 == 19:  # a checkpoint that restarts the WAL must not hide the next commit
            writer.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seen.append(reader.version())
    assert all(a != b for a, b in itertools.pairwise(seen))
    assert reader.version() == seen[-1]  # and it holds still while nothing changes


def test_a_remembered_token_still_ends_with_its_rotation_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteKeyStore(tmp_path)
    auth = Authenticator(SQLiteKeyStore(tmp_path))
    old = store.create(new_key("acme"))
    key_id = old.split("_")[1]
    new = store.rotate(key_id, grace_s=60)
    assert auth.authenticate({"x-api-key": old}).key_id == key_id  # verified once, now remembered
    assert auth.authenticate({"x-api-key": new}).key_id == key_id
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)  # the grace is over, and the store did not change
    with pytest.raises(Unauthorized, match="not valid"):
        auth.authenticate({"x-api-key": old})
    assert auth.authenticate({"x-api-key": new}).key_id == key_id
    for _ in range(3):
        with pytest.raises(Unauthorized):
            auth.authenticate({"x-api-key": old + "x"})
    assert old + "x" not in auth._verified  # only valid tokens are remembered


def test_the_first_serve_makes_one_dev_key(tmp_path: Path) -> None:
    store = SQLiteKeyStore(tmp_path)
    made = ensure_dev_key(store, tmp_path)
    assert made is not None and made[1]
    assert stat.S_IMODE(os.stat(tmp_path / "dev-key").st_mode) == 0o600
    again = ensure_dev_key(store, tmp_path)
    assert again == (made[0], False) and len(store.list()) == 1
    assert store.list()[0].admin


@pytest.mark.parametrize(("text", "per_s"), [("50/s", 50.0), ("600/min", 10.0), ("3600/h", 1.0), ("1.5/sec", 1.5)])
def test_rates_parse(text: str, per_s: float) -> None:
    assert parse_rate(text) == per_s


@pytest.mark.parametrize("bad", ["50", "50/fortnight", "-1/s", "0/s", "fast"])
def test_bad_rates_are_clear_errors(bad: str) -> None:
    with pytest.raises(SpecError, match="50/s"):
        parse_rate(bad)


def test_quota_and_expiry_parse() -> None:
    assert parse_quota("100000/month") == 100000 and parse_quota("7") == 7
    assert parse_expiry("30d", now=0.0) == 30 * 86400
    assert parse_duration("1h") == 3600 and parse_duration("0s") == 0 and parse_duration("2026-12-01") is None
    assert parse_expiry("2026-12-01") == month_bounds(parse_expiry("2026-11-15"))[1]
    with pytest.raises(SpecError):
        parse_expiry("someday")


def _key(**limits: object):  # type: ignore[no-untyped-def]
    record = new_key("t", **limits)
    return record.__class__(**{**record.__dict__, "key_id": "k1"})


# Rates and gaps that binary floating point holds exactly, so the expected counts are exact too.
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]),
    burst=st.integers(1, 20),
    gap=st.integers(0, 12).map(lambda q: q / 4),
)
def test_the_token_bucket_lets_exactly_burst_plus_refill_through(rate: float, burst: int, gap: float) -> None:
    limiter = Limiter()
    key = _key(rate_per_s=rate, burst=burst)
    let_in = 0
    for _ in range(burst + 5):
        try:
            limiter.admit(key, now=100.0).release()
            let_in += 1
        except RateLimited as e:
            assert 0 < e.retry_after <= 1 / rate + 1e-9
    assert let_in == burst
    refill = min(burst, int(gap * rate))
    later = 0
    for _ in range(burst + 5):
        try:
            limiter.admit(key, now=100.0 + gap).release()
            later += 1
        except RateLimited:
            break
    assert later == refill


def test_concurrency_is_released_and_the_quota_gives_back_what_was_not_charged(tmp_path: Path) -> None:
    limiter = Limiter()
    key = _key(concurrency=2, quota_per_month=10)
    a, b = limiter.admit(key), limiter.admit(key)
    with pytest.raises(RateLimited, match="in flight"):
        limiter.admit(key)
    a.release()
    limiter.admit(key).release()

    ledger_file = tmp_path / "ledger.sqlite"
    SQLiteLedger(ledger_file).db.close()  # the ledger's tables, empty
    fleet = SQLiteFleetState(ledger_file, 3600)

    async def run() -> None:
        holds = [await take_quota(fleet, key) for _ in range(10)]
        with pytest.raises(QuotaExceeded) as info:
            await take_quota(fleet, key)
        assert info.value.retry_after > 0
        held = holds[0]
        assert held is not None
        await held.settle(charged=False)  # failed: its unit comes back
        await take_quota(fleet, key)
        with pytest.raises(QuotaExceeded):
            await take_quota(fleet, key)

    asyncio.run(run())
    b.release()


def _record(i: int, tenant: str, price: int, status: int = 200, tier: str = "standard") -> Record:
    return Record(
        f"r{i}", int(time.time() * 1e6), "k1", tenant, "v2", "m", "1", None, tier, "f", "f-1", False, None,
        0.1, 1.5, 10, 20, 1, 3, status, price,
    )  # fmt: skip


def test_the_ledger_groups_commits_and_usage_is_exact(tmp_path: Path) -> None:
    async def write() -> SQLiteLedger:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        records = [_record(i, "acme", 7 + i % 3, tier="economy" if i % 4 == 0 else "standard") for i in range(300)]
        records.append(_record(300, "acme", 0, status=503))
        records.append(_record(301, "other", 1000))
        await asyncio.gather(*(ledger.append(r) for r in records))
        assert ledger.stats()["commits"] < len(records) / 10  # grouped, not one commit per record
        await ledger.close()
        return ledger

    asyncio.run(write())
    ledger = SQLiteLedger(tmp_path / "ledger.sqlite")  # reopened: everything is on disk
    _, start, end = month_span(None)
    rows = ledger.usage(start, end, tenant="acme")
    expected = sum(7 + i % 3 for i in range(300))
    assert sum(r.charged for r in rows) == expected and sum(r.requests for r in rows) == 300
    assert sum(r.failed for r in rows) == 1
    assert ledger.charged_in_month("k1", start, end) == 301  # 300 acme + 1 other, the 503 not counted
    doc = report(rows, "2026-11", "USD", tenant="acme")
    assert doc["total"]["charged"] == money(expected)
    assert to_csv(doc).splitlines()[-1].startswith("TOTAL,,,300,1,")
    asyncio.run(ledger.close())


def test_a_duplicate_request_id_is_never_written_twice(tmp_path: Path) -> None:
    async def run() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        await ledger.append(_record(1, "acme", 5))
        with pytest.raises(LedgerUnavailable, match="billing record was refused"):
            await ledger.append(_record(1, "acme", 5))
        await ledger.append(_record(2, "acme", 5))  # the writer keeps working
        await ledger.close()

    asyncio.run(run())


def test_money_is_exact_integer_formatting() -> None:
    assert money(0) == "0.000000" and money(1) == "0.000001" and money(123_456_789) == "123.456789"
    assert money(-5) == "-0.000005"
    assert month_span("2026-02")[2] - month_span("2026-02")[1] == 28 * 86400
    with pytest.raises(Exception, match="2026-11"):
        month_span("2026-13")
