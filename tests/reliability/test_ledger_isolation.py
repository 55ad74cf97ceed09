"""One bad record never fails another's commit: a record that breaks a constraint is refused alone, and every
other record of its group commits; under the issue's repro, an unrelated tenant's requests all keep their
answers and records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from tests.integration.server import Server
from tests.reliability.hazards import bearer, fine, ledger_rows, model_bug, post_together

from slserve.accounts.keys import new_key
from slserve.metering.ledger import SQLiteLedger
from slserve.metering.records import Record, StoredResponse


def _record(request_id: str, tenant: str, price: int = 5) -> Record:
    return Record(
        request_id, int(time.time() * 1e6), "k1", tenant, "v2", "m", "1", None, "standard", "f", "f-1",
        False, None, 0.1, 1.5, 10, 20, 1, None, 200, price,
    )  # fmt: skip


def test_a_bad_record_is_refused_alone_and_its_group_commits(tmp_path: Path) -> None:
    async def run() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        await ledger.append(_record("taken", "acme"))
        stored = StoredResponse("other-3", "fp", 200, {}, b"ok")
        group = [
            ledger.append(_record("other-1", "other")),
            ledger.append(_record("taken", "acme")),  # a duplicate request id
            ledger.append(_record("other-2", "other", price=-1)),  # breaks the price check
            ledger.append(_record("other-3", "other"), ("k1", "idem", stored)),
            ledger.append(_record("other-4", "other")),
        ]
        results = await asyncio.gather(*group, return_exceptions=True)  # one loop turn: one group
        assert [type(r).__name__ for r in results] == [
            "NoneType", "LedgerUnavailable", "LedgerUnavailable", "NoneType", "NoneType",
        ]  # fmt: skip
        assert "UNIQUE" in str(results[1]) and "CHECK" in str(results[2])
        rows = ledger.db.execute("SELECT request_id FROM records WHERE tenant = 'other' ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == ["other-1", "other-3", "other-4"]
        assert ledger.stored_response("k1", "idem") is not None
        await ledger.close()

    asyncio.run(run())


def test_a_record_sent_after_the_acknowledgements_stopped_is_never_left_waiting(tmp_path: Path) -> None:
    """The writer's acknowledgements end (its stdout closed) before its exit is known: a group flushed in that gap
    used to be registered and never settled, holding its request (and its concurrency slot) forever."""

    async def run() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        await ledger.append(_record("a", "acme"))
        writer, reader = ledger._writer, ledger._reader_task
        assert writer is not None and writer.stdout is not None and reader is not None
        writer.stdout.feed_eof()  # no more acknowledgements, while the process is still running
        await reader
        assert writer.returncode is None
        await asyncio.wait_for(ledger.append(_record("b", "acme")), timeout=30)  # a new writer takes it
        await asyncio.wait_for(writer.wait(), timeout=30)  # the old one was let go
        count = ledger.db.execute("SELECT count(*) FROM records").fetchone()[0]
        assert count == 2
        await ledger.close()

    asyncio.run(run())


def test_failing_idempotent_duplicates_cost_an_unrelated_tenant_nothing(server: Server) -> None:
    """The issue's repro: a holder of a key fails, its duplicates wait on it, while another tenant's requests
    share the ledger's commits. Every one of the bystander's requests is answered and has its record."""
    hostile = server.keys().create(new_key("hostile"))
    bystander = server.keys().create(new_key("bystander"))
    url = server.url + "/v2/models/hazards/infer"
    answered: list[httpx.Response] = []

    async def bystanders(done: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while not done.is_set():
                answered.append(await client.post(url, json=fine(), headers=bearer(bystander)))

    async def scenario() -> None:
        done = asyncio.Event()
        stream = asyncio.gather(*(bystanders(done) for _ in range(6)))
        for round_ in range(12):
            headers = {**bearer(hostile), "Idempotency-Key": f"c{round_}"}
            first = asyncio.ensure_future(post_together(url, [(model_bug(), headers)]))
            await asyncio.sleep(0.01)
            dupes = await post_together(url, [(fine(), headers)] * 5)
            assert {r.status_code for r in dupes} == {200}, [r.text for r in dupes]
            await first
        done.set()
        await stream

    asyncio.run(scenario())
    assert answered and {r.status_code for r in answered} == {200}, [r.text for r in answered if r.status_code != 200]
    ids = {r.headers["x-request-id"] for r in answered}
    recorded = {row[0] for row in ledger_rows(server.state, "tenant = 'bystander'")}
    assert ids == recorded
