"""The key store and the ledger: one suite, two stores (SQLite here, DynamoDB on AWS through moto's server over
real HTTP). Exactly one record per request, exact usage, idempotent answers that expire, keyed hashes only."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.aws import client

from slserve.accounts.keys import KeyStore, SQLiteKeyStore, new_key, split_token
from slserve.errors import LedgerUnavailable, SpecError, Unauthorized
from slserve.gateway.auth import Authenticator
from slserve.metering.fleet import SQLiteFleetState
from slserve.metering.ledger import SQLiteLedger
from slserve.metering.records import Ledger, Record, StoredResponse
from slserve.metering.usage import month_span

_prefixes = itertools.count()
STORES = ["sqlite", "dynamodb"]


@pytest.fixture(params=STORES)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KeyStore, Any]]:
    """(key store, a function making a ledger with a retention)."""
    if request.param == "sqlite":
        yield SQLiteKeyStore(tmp_path), lambda retention_s: SQLiteLedger(tmp_path / "ledger.sqlite", retention_s)
        return
    from slserve.accounts.dynamo import DynamoKeyStore
    from slserve.aws.schema import create_tables
    from slserve.metering.dynamo import DynamoLedger

    dynamodb = client(request.getfixturevalue("moto_endpoint"), "dynamodb")
    names = create_tables(dynamodb, f"t{next(_prefixes)}")
    keys = DynamoKeyStore(dynamodb, names["keys"], b"server secret", refresh_s=0)
    yield keys, lambda retention_s: DynamoLedger(dynamodb, names["ledger"], names["responses"], retention_s)


def _record(
    i: int | str, tenant: str, price: int, status: int = 200, tier: str = "standard", age_s: float = 0
) -> Record:
    return Record(
        f"r{i}", int((time.time() - age_s) * 1e6), "k1", tenant, "v2", "m", "1", None, tier, "f", "f-1", False, None,
        0.1, 1.5, 10, 20, 1, 3, status, price,
    )  # fmt: skip


def test_keys_keep_only_a_keyed_hash_and_changes_reach_a_running_gateway(stores: tuple[KeyStore, Any]) -> None:
    store, _ = stores
    auth = Authenticator(store)
    token = store.create(new_key("acme", models=("minilm",)))
    key_id, secret = split_token(token) or ("", "")
    record = store.get(key_id)
    assert record is not None and record.models == ("minilm",) and secret.encode() not in record.secret_hash
    assert auth.authenticate({"x-api-key": token}).key_id == key_id
    assert [k.key_id for k in store.list("acme")] == [key_id] and store.list("nobody") == []
    rotated = store.rotate(key_id, grace_s=0)
    with pytest.raises(Unauthorized, match="not valid"):
        auth.authenticate({"x-api-key": token})
    assert auth.authenticate({"x-api-key": rotated}).key_id == key_id
    store.revoke(key_id)
    with pytest.raises(Unauthorized, match="revoked"):
        auth.authenticate({"x-api-key": rotated})
    with pytest.raises(SpecError, match="revoked"):
        store.rotate(key_id, 0)
    with pytest.raises(SpecError, match="no key"):
        store.revoke("000000000000")


def test_the_ledger_is_exact_one_record_per_request(stores: tuple[KeyStore, Any]) -> None:
    _, make = stores

    async def run() -> None:
        ledger: Ledger = make(3600)
        records = [_record(i, "acme", 7 + i % 3, tier="economy" if i % 4 == 0 else "standard") for i in range(60)]
        records += [_record(60, "acme", 0, status=503), _record(61, "acme", 0, status=499), _record(62, "other", 1000)]
        await asyncio.gather(*(ledger.append(r) for r in records))
        with pytest.raises(LedgerUnavailable, match="refused"):
            await ledger.append(_record(5, "acme", 9))  # the same request id again: never written twice
        _, start, end = month_span(None)
        rows = ledger.usage(start, end, tenant="acme")
        assert sum(r.charged for r in rows) == sum(7 + i % 3 for i in range(60))
        totals = (sum(r.requests for r in rows), sum(r.failed for r in rows), sum(r.abandoned for r in rows))
        assert totals == (60, 1, 1)
        assert {(r.tier, r.requests) for r in rows} == {("economy", 15), ("standard", 45)}
        assert ledger.charged_in_month("k1", start, end) == 61  # 60 acme + 1 other; the 503 and 499 not counted
        mine = ledger.usage(start, end, key_id="k1")
        assert sum(r.charged for r in mine) == sum(r.charged for r in rows) + 1000
        spend = {(r.tenant, r.tier): (r.requests, r.charged) for r in ledger.spend(start, end)}  # the dashboard's
        economy = sum(7 + i % 3 for i in range(0, 60, 4))
        assert spend == {
            ("acme", "economy"): (15, economy),
            ("acme", "standard"): (47, sum(7 + i % 3 for i in range(60)) - economy),  # + the 503 and the 499
            ("other", "standard"): (1, 1000),
        }
        await ledger.close()

    asyncio.run(run())


def test_stored_answers_replay_expire_and_go_with_a_correction(stores: tuple[KeyStore, Any]) -> None:
    _, make = stores

    async def run() -> None:
        ledger: Ledger = make(60)
        stored = StoredResponse("rnew", "fp", 200, {"x-slserve-cost": "9"}, b"\x00body")
        await ledger.append(_record("new", "acme", 9), ("k1", "idem-1", stored))
        old = StoredResponse("rold", "fp", 200, {}, b"old")
        await ledger.append(_record("old", "acme", 9, age_s=120), ("k1", "idem-2", old))
        got = ledger.stored_response("k1", "idem-1")
        assert got == stored
        assert ledger.stored_response("k1", "idem-2") is None  # past the retention: the key runs anew
        assert ledger.stored_response("k2", "idem-1") is None  # another API key's
        await ledger.correct("rnew", 499, 0)  # its client left before the answer went out
        assert ledger.stored_response("k1", "idem-1") is None
        _, start, end = month_span(None)
        rows = ledger.usage(start, end, tenant="acme")
        assert (sum(r.abandoned for r in rows), sum(r.charged for r in rows)) == (1, 9)
        await ledger.close()

    asyncio.run(run())


def test_artifacts_go_to_s3_content_addressed_and_once(moto_endpoint: str, tmp_path: Path) -> None:
    import hashlib

    import numpy as np

    from slserve.aws.upload import blob_key, upload
    from slserve.snapshot import ArtifactStore
    from slserve.snapshot.manifest import Manifest

    store = ArtifactStore(tmp_path / "artifacts")
    weights = np.random.default_rng(0).standard_normal(3 * 1024 * 1024).astype(np.float32)  # 12 MB: in parts
    big, _ = store.blobs.put_bytes(memoryview(weights).cast("B"))
    small, _ = store.blobs.put_bytes(b"a small file")
    manifest = Manifest.model_validate(
        {
            **_manifest_doc(),
            "tensors": {"w": {"digest": big, "dtype": "float32", "shape": [weights.size], "nbytes": weights.nbytes}},
            "files": {"graph.onnx": {"digest": small, "size": 12}},
        }
    )
    artifact = store.save(manifest)
    s3 = client(moto_endpoint, "s3")
    s3.create_bucket(Bucket="artifacts")
    seen: list[int] = []
    first = upload(s3, "artifacts", store, "fn", artifact.digest, seen.append, part_bytes=5 * 1024 * 1024)
    assert (first.sent, first.skipped) == (3, 0) and sum(seen) == first.sent_bytes  # manifest, weights, file
    again = upload(s3, "artifacts", store, "fn", artifact.digest, part_bytes=5 * 1024 * 1024)
    assert (again.sent, again.skipped) == (0, 3)  # content-addressed: nothing twice
    body = s3.get_object(Bucket="artifacts", Key=blob_key(big))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == big
    assert s3.get_object(Bucket="artifacts", Key="refs/fn")["Body"].read().decode() == artifact.digest


def _manifest_doc() -> dict[str, Any]:
    """A valid manifest of the classifier sample, to carry other tensors."""
    from tests.conftest import FUNCTIONS

    from slserve.spec import load_function

    spec = load_function(FUNCTIONS / "classifier").spec
    build = {"build_key": "0" * 64, "slserve": "test", "python": "3", "created_at": "2026-11-30", "host": "here"}
    return {"function": "fn", "spec": spec.model_dump(mode="json"), "tensors": {}, "files": {}, "build": build}


@pytest.fixture(params=STORES)
def fleet_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """(ledger, the fleet state beside it) on one store."""
    if request.param == "sqlite":
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite", 3600)  # each test closes it, on its own loop
        yield ledger, SQLiteFleetState(tmp_path / "ledger.sqlite", 3600)
        return
    from slserve.aws.schema import create_tables
    from slserve.metering.dynamo import DynamoLedger
    from slserve.metering.dynamo_fleet import DynamoFleetState

    dynamodb = client(request.getfixturevalue("moto_endpoint"), "dynamodb")
    names = create_tables(dynamodb, f"f{next(_prefixes)}")
    dynamo = DynamoLedger(dynamodb, names["ledger"], names["responses"], 3600)
    yield dynamo, DynamoFleetState(dynamodb, dynamo, names["quotas"])


def test_a_claim_holds_its_key_until_released_or_answered_and_an_expired_lease_is_taken_over(
    fleet_stores: tuple[Any, Any],
) -> None:
    ledger, fleet = fleet_stores

    async def run() -> None:
        assert (await fleet.claim("k1", "order", "r-a", 60)).claimed
        held = await fleet.claim("k1", "order", "r-b", 60)
        assert not held.claimed and held.stored is None  # in progress elsewhere
        await fleet.release("k1", "order", "r-a")  # it failed: the next one runs
        assert (await fleet.claim("k1", "order", "r-b", 60)).claimed
        stored = StoredResponse("r-b", "fp", 200, {"x": "1"}, b"answer")
        await ledger.append(_record("-b", "acme", 5), ("k1", "order", stored))
        await fleet.release("k1", "order", "r-b")  # after its answer: the answer stays
        replay = await fleet.claim("k1", "order", "r-c", 60)
        assert not replay.claimed and replay.stored is not None and replay.stored.body == b"answer"
        assert (await fleet.claim("k1", "lost", "r-d", -1)).claimed  # a holder that died: its lease ran out
        assert (await fleet.claim("k1", "lost", "r-e", 60)).claimed
        await ledger.close()

    asyncio.run(run())


def test_quota_counters_start_from_the_ledger_and_never_pass_the_quota(fleet_stores: tuple[Any, Any]) -> None:
    ledger, fleet = fleet_stores
    _, start, end = month_span(None)

    async def run() -> list[bool]:
        for i in range(2):  # charged before the counter existed
            await ledger.append(_record(f"q{i}", "acme", 5))
        taken = [await fleet.take_quota("k1", start, end, 4) for _ in range(4)]
        await fleet.return_quota("k1", start)
        taken.append(await fleet.take_quota("k1", start, end, 4))
        taken.append(await fleet.take_quota("k1", start, end, 4))
        await ledger.close()
        return taken

    assert asyncio.run(run()) == [True, True, False, False, True, False]


def test_an_answer_too_large_for_dynamodb_is_kept_as_its_size(moto_endpoint: str) -> None:
    from slserve.aws.schema import create_tables
    from slserve.metering.dynamo import STORED_ANSWER_LIMIT, DynamoLedger
    from slserve.metering.dynamo_fleet import DynamoFleetState

    dynamodb = client(moto_endpoint, "dynamodb")
    names = create_tables(dynamodb, f"big{next(_prefixes)}")
    ledger = DynamoLedger(dynamodb, names["ledger"], names["responses"], 3600)
    fleet = DynamoFleetState(dynamodb, ledger, names["quotas"])
    body = b"x" * (STORED_ANSWER_LIMIT + 1)

    async def run() -> StoredResponse | None:
        assert (await fleet.claim("k1", "big", "r-big", 60)).claimed
        await ledger.append(_record("-big", "acme", 5), ("k1", "big", StoredResponse("r-big", "fp", 200, {}, body)))
        return (await fleet.claim("k1", "big", "r-retry", 60)).stored

    stored = asyncio.run(run())
    assert stored is not None and stored.body == b"" and stored.omitted_bytes == len(body)
