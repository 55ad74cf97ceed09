"""Nobody is billed for an answer never delivered: a client that leaves takes its queued work with it, work
already sent to an instance is cancelled there unless its model call began, work that ran for a client who
left is recorded with status 499 and charged by the `bill_abandoned` policy (default: not), and an instance
computing only for callers who are gone is stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.server import Server, start_server
from tests.integration.test_platform import wait_for
from tests.reliability.hazards import TIMEOUT_S, bearer, ledger_rows, sleeping

from slserve.accounts.keys import new_key
from slserve.platform.v2 import CLIENT_TIMEOUT
from slserve.snapshot import ArtifactStore


async def post_with_timeout(
    url: str, bodies: list[dict[str, Any]], headers: dict[str, str], timeout: float
) -> list[Any]:
    """Each on its own connection; a client that times out closes it (the server sees the disconnect)."""

    async def one(body: dict[str, Any]) -> Any:
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                return await client.post(url, json=body, headers=headers)
            except httpx.TimeoutException as e:
                return e

    return await asyncio.gather(*(one(b) for b in bodies))


def settled(server: Server, function: str) -> bool:
    s = server.status(function)
    return s["queued"] == 0 and s["in_flight"] == 0


def test_clients_that_leave_are_not_billed_and_their_unstarted_work_is_dropped(server: Server) -> None:
    key = server.keys().create(new_key("leaver"))
    url = server.url + "/v2/models/hazards/infer"
    served_before = server.status("hazards")["served"]

    async def scenario() -> tuple[list[Any], list[Any]]:
        stayers = asyncio.ensure_future(post_with_timeout(url, [sleeping(2.0)] * 2, bearer(key), timeout=30))
        while server.status("hazards")["in_flight"] < 2:  # the stayers' call has begun
            await asyncio.sleep(0.02)
        leavers = await post_with_timeout(url, [sleeping(4.0)] * 6, bearer(key), timeout=0.5)
        return await stayers, leavers

    stayed, left = asyncio.run(scenario())
    assert [r.status_code for r in stayed] == [200, 200]
    assert all(isinstance(r, httpx.TimeoutException) for r in left)
    assert wait_for(lambda: settled(server, "hazards"), timeout=30)
    rows = ledger_rows(server.state, "tenant = 'leaver'")
    answered = {r.headers["x-request-id"] for r in stayed}
    assert {row[0] for row in rows if row[2] > 0} == answered  # billed = delivered
    assert sorted(row[1] for row in rows) == [200, 200, 499, 499, 499, 499, 499, 499]
    # The leavers' model calls never ran to the end: dropped before they began, or stopped with their instance.
    assert server.status("hazards")["served"] - served_before == 2


def test_an_instance_computing_past_every_deadline_is_stopped(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=sleeping(0)).status_code == 200
    r = server.post("/v2/models/hazards/infer", json=sleeping(30))
    assert r.status_code == 504
    busy = [i for i in server.status("hazards")["instances"] if i["in_flight"]]
    assert busy, "the timed-out call should still hold its instance"
    pid = busy[0]["pid"]
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=TIMEOUT_S + 5)
    assert "was given up" in server.log.read_text()
    assert server.post("/v2/models/hazards/infer", json=sleeping(0)).status_code == 200


@pytest.fixture(scope="module")
def billing_server(hazard_functions: tuple[Path, ArtifactStore]) -> Iterator[Server]:
    functions, store = hazard_functions
    srv = start_server(
        functions, store.root, functions.parent / "serve-bill.log", bill_abandoned="true", request_timeout_s="10"
    )
    yield srv
    srv.stop()


@pytest.mark.slow
def test_the_bill_abandoned_policy_charges_work_that_ran(billing_server: Server) -> None:
    key = billing_server.keys().create(new_key("policy"))
    url = billing_server.url + "/v2/models/hazards/infer"
    assert billing_server.post("/v2/models/hazards/infer", json=sleeping(0)).status_code == 200
    (gone,) = asyncio.run(post_with_timeout(url, [sleeping(0.9)], bearer(key), timeout=0.5))
    assert isinstance(gone, httpx.TimeoutException)
    assert wait_for(lambda: len(ledger_rows(billing_server.state, "tenant = 'policy'")) == 1, timeout=10)
    ((_, status, price, _),) = ledger_rows(billing_server.state, "tenant = 'policy'")
    assert status == 499 and price > 0  # it ran to the end: charged under this policy


def test_a_request_that_would_wait_past_its_deadline_is_refused_at_once(server: Server) -> None:
    url = server.url + "/v2/models/hazards-eco/infer"  # one instance, eight requests a call

    async def scenario() -> tuple[list[Any], httpx.Response, bool]:
        measured = await post_with_timeout(url, [sleeping(1.0)] * 8, server.auth, timeout=60)  # its speed, batched
        assert [r.status_code for r in measured] == [200] * 8
        backlog = asyncio.ensure_future(post_with_timeout(url, [sleeping(1.0)] * 12, server.auth, timeout=60))
        while (await asyncio.to_thread(server.status, "hazards-eco"))["queued"] == 0:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(timeout=30) as client:
            hurried = await client.post(url, json=sleeping(0), headers={**server.auth, CLIENT_TIMEOUT: "500"})
        backlog_still_waiting = not backlog.done()
        return await backlog, hurried, backlog_still_waiting

    backlog, hurried, before_the_backlog = asyncio.run(scenario())
    assert hurried.status_code == 429 and "more than this request's" in hurried.json()["error"], hurried.text
    assert before_the_backlog and int(hurried.headers["retry-after"]) >= 1  # refused at once, not after waiting
    assert [r.status_code for r in backlog] == [200] * 12
    assert (
        server.post("/v2/models/hazards-eco/infer", json=sleeping(0), headers={CLIENT_TIMEOUT: "abc"}).status_code
        == 400
    )
