"""Idempotency-Key: requests with one key run one at a time; when the holder fails, the next in line runs and
the rest replay its answer; anything that changes the answer changes the fingerprint; stored answers expire."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from tests.integration.server import Server
from tests.reliability.hazards import bearer, fine, ledger_rows, model_bug, post_together, texts

from slserve.accounts.keys import new_key
from slserve.errors import IdempotencyInProgress
from slserve.gateway.idempotency import KeyHolders
from slserve.metering.ledger import SQLiteLedger
from slserve.metering.records import Record, StoredResponse


def _claimed_or_recorded(state: Path, idempotency_key: str, tenant: str) -> bool:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        claims = db.execute("SELECT count(*) FROM claims WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
    return bool(claims[0]) or bool(ledger_rows(state, "tenant = ?", tenant))


def test_when_the_holder_fails_the_next_runs_and_the_rest_replay_its_answer(server: Server) -> None:
    key = server.keys().create(new_key("idem-co"))
    url = server.url + "/v2/models/hazards/infer"
    headers = {**bearer(key), "Idempotency-Key": "order-1"}

    async def scenario() -> list:  # type: ignore[type-arg]
        first = asyncio.ensure_future(post_together(url, [(model_bug(), headers)]))
        while not _claimed_or_recorded(server.state, "order-1", "idem-co"):  # the failing one holds the key first
            await asyncio.sleep(0.002)
        rest = await post_together(url, [(fine(0.7), headers)] * 5)
        return [*(await first), *rest]

    failed, *rest = asyncio.run(scenario())
    assert failed.status_code == 500, failed.text
    assert {r.status_code for r in rest} == {200}
    assert len({r.headers["x-request-id"] for r in rest}) == 1  # one of them ran, four replayed it
    assert sum(r.headers.get("x-slserve-idempotent-replay") == "true" for r in rest) == 4
    assert len({r.content for r in rest}) == 1
    rows = ledger_rows(server.state, "tenant = 'idem-co'")
    assert sorted((s, p > 0) for _, s, p, _ in rows) == [(200, True), (500, False)]


def test_the_fingerprint_covers_everything_that_changes_the_answer(server: Server) -> None:
    key = server.keys().create(new_key("fp-co"))
    first = {**bearer(key), "Idempotency-Key": "k"}
    assert server.post("/v2/models/hazards/infer", json=fine(), headers=first).status_code == 200
    differs = [
        ("/v2/models/hazards/infer", fine(), {"x-slserve-tier": "economy"}),
        ("/v2/models/hazards/infer", fine(), {"x-slserve-routing-key": "someone-else"}),
        ("/v2/models/hazards/infer", fine(), {"x-slserve-allow-upgrade": "true"}),
        ("/v2/models/hazards/versions/1/infer", fine(), {}),
        ("/v2/models/hazards/infer", {**fine(), "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, {}),
        ("/v2/models/hazards/infer", {**fine(), "parameters": {"binary_data_output": True}}, {}),
        ("/v2/models/hazards/infer", {**fine(), "parameters": {"tier": "economy"}}, {}),
        ("/v2/models/hazards/infer", fine(0.6), {}),
    ]
    for path, body, extra in differs:
        r = server.post(path, json=body, headers={**first, **extra})
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused", (path, extra, r.text)
    replay = server.post("/v2/models/hazards/infer", json=fine(), headers=first)
    assert replay.status_code == 200 and replay.headers["x-slserve-idempotent-replay"] == "true"


def test_the_same_key_on_another_endpoint_is_another_request(server: Server) -> None:
    key = server.keys().create(new_key("fp-oa"))
    headers = {**bearer(key), "Idempotency-Key": "e"}
    assert server.post("/v1/embeddings", json={"model": "words", "input": ["a b"]}, headers=headers).status_code == 200
    other = server.post("/v2/models/words/infer", json=texts("a b"), headers=headers)
    assert other.status_code == 422


def test_waiters_are_handed_the_key_in_order_and_time_out_with_a_409() -> None:
    async def run() -> None:
        holders = KeyHolders()
        slot = ("k1", "key")
        order: list[int] = []
        await holders.acquire(slot, 1.0)

        async def waiter(n: int) -> None:
            await holders.acquire(slot, 5.0)
            order.append(n)
            holders.release(slot)

        tasks = [asyncio.ensure_future(waiter(n)) for n in range(3)]
        await asyncio.sleep(0)
        tasks[1].cancel()  # a waiter whose client left gives up its place
        with pytest.raises(IdempotencyInProgress, match="still running"):
            await holders.acquire(slot, 0.05)
        holders.release(slot)
        await asyncio.gather(tasks[0], tasks[2])
        assert order == [0, 2] and len(holders) == 0

    asyncio.run(run())


def _record(request_id: str, age_s: float) -> Record:
    return Record(
        request_id, int((time.time() - age_s) * 1e6), "k1", "t", "v2", "m", "1", None, "standard", "f", "f-1",
        False, None, 0.1, 1.5, 10, 20, 1, None, 200, 7,
    )  # fmt: skip


def test_stored_answers_expire_after_the_retention_and_are_pruned(tmp_path: Path) -> None:
    async def run() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite", retention_s=60)
        for request_id, age, idem in [("old", 120.0, "a"), ("new", 1.0, "b")]:
            stored = StoredResponse(request_id, "fp", 200, {"x": "1"}, b"body")
            await ledger.append(_record(request_id, age), ("k1", idem, stored))
        assert ledger.stored_response("k1", "a") is None  # expired: the key runs anew
        assert ledger.stored_response("k1", "b") is not None
        await ledger.close()  # the writer prunes after an acknowledgement
        with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
            kept = [r[0] for r in db.execute("SELECT request_id FROM responses")]
            assert kept == ["new"]
            assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 2  # the bill stays

    asyncio.run(run())
