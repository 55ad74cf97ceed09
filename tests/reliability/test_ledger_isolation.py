"""One bad record never fails another's commit: a record that breaks a constraint is refused alone, and every
other record of its group commits; under the issue's repro, an unrelated tenant's requests all keep their
answers and records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.server import Server
from tests.reliability.hazards import bearer, fine, ledger_rows, model_bug, post_together

from slserve.accounts.keys import new_key
from slserve.metering.ledger import Record, SQLiteLedger, StoredResponse


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


def test_a_writer_gone_between_acks_fails_new_records_fast_then_restarts(tmp_path: Path) -> None:
    """A group flushed after the writer's acknowledgements stopped must not wait forever."""

    async def run() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        await ledger.append(_record("a", "acme"))
        assert ledger._writer is not None and ledger._reader_task is not None
        ledger._writer.kill()
        await ledger._reader_task  # the acknowledgements have stopped
        await asyncio.wait_for(ledger.append(_record("b", "acme")), timeout=30)  # a new writer takes it
        count = ledger.db.execute("SELECT count(*) FROM records").fetchone()[0]
        assert count == 2
        await ledger.close()

    asyncio.run(run())


def test_failing_idempotent_duplicates_cost_an_unrelated_tenant_nothing(server: Server) -> None:
    hostile = server.keys().create(new_key("hostile"))
    bystander = server.keys().create(new_key("bystander"))
    url = server.url + "/v2/models/hazards/infer"
    same_key = {**bearer(hostile), "Idempotency-Key": "collide"}

    async def scenario() -> tuple[list, list]:  # type: ignore[type-arg]
        bystanders = asyncio.ensure_future(post_together(url, [(fine(i / 50), bearer(bystander)) for i in range(40)]))
        for round_ in range(5):
            first = asyncio.ensure_future(
                post_together(url, [(model_bug(), {**same_key, "Idempotency-Key": f"c{round_}"})])
            )
            await asyncio.sleep(0.01)
            dupes = await post_together(url, [(fine(), {**same_key, "Idempotency-Key": f"c{round_}"})] * 5)
            await first
        return await bystanders, dupes

    answered, _ = asyncio.run(scenario())
    assert {r.status_code for r in answered} == {200}, [r.text for r in answered if r.status_code != 200]
    ids = {r.headers["x-request-id"] for r in answered}
    recorded = {row[0] for row in ledger_rows(server.state, "tenant = 'bystander'")}
    assert ids == recorded
