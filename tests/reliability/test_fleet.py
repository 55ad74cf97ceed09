"""What a fleet shares, on one machine: two gateway processes on one state folder (as several router
environments share DynamoDB on Lambda: `test_aws_router.py` holds the same against moto). Whichever process takes
a request, a retried Idempotency-Key runs once and is charged once, and a key's quota admits exactly N."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server import Server, start_server
from tests.reliability.hazards import TIMEOUT_S, bearer, fine, ledger_rows, sleeping

from slserve.accounts.keys import new_key
from slserve.snapshot import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(
    hazard_functions: tuple[Path, ArtifactStore], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    functions, store = hazard_functions
    root = tmp_path_factory.mktemp("fleet")
    state = root / "state"
    servers: list[Server] = []
    try:
        for n in range(2):
            log = root / f"gateway-{n}.log"
            servers.append(start_server(functions, store.root, log, state=state, request_timeout_s=str(TIMEOUT_S)))
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _across(
    servers: list[Server], path: str, body: dict, headers: dict[str, str], n: int
) -> list[httpx.Response]:  # type: ignore[type-arg]
    """`n` requests at once, alternating between the processes, each on its own connection."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n + 1)) as client:
        return await asyncio.gather(
            *(client.post(servers[i % len(servers)].url + path, json=body, headers=headers) for i in range(n))
        )


def test_twenty_racing_duplicates_across_two_processes_run_once_and_are_charged_once(fleet: list[Server]) -> None:
    key = fleet[0].keys().create(new_key("fleet-idem"))
    headers = {**bearer(key), "Idempotency-Key": "order-fleet-1"}
    replies = asyncio.run(_across(fleet, "/v2/models/hazards/infer", sleeping(0.4), headers, 20))
    assert {r.status_code for r in replies} == {200}, [r.text for r in replies if r.status_code != 200]
    assert len({r.headers["x-request-id"] for r in replies}) == 1  # one ran; 19 replayed its answer
    assert sum(r.headers.get("x-slserve-idempotent-replay") == "true" for r in replies) == 19
    assert len({r.content for r in replies}) == 1
    rows = ledger_rows(fleet[0].state, "tenant = 'fleet-idem'")
    assert [(status, price > 0) for _, status, price, _ in rows] == [(200, True)]  # one record, one charge


def test_a_quota_of_n_admits_exactly_n_across_two_processes(fleet: list[Server]) -> None:
    key = fleet[0].keys().create(new_key("fleet-quota", quota_per_month=5))
    replies = asyncio.run(_across(fleet, "/v2/models/hazards/infer", fine(), bearer(key), 16))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 5 + [429] * 11, [r.text for r in replies if r.status_code not in (200, 429)]
    assert all(r.json()["code"] == "quota_exceeded" for r in replies if r.status_code == 429)
    charged = ledger_rows(fleet[0].state, "tenant = 'fleet-quota' AND price > 0")
    assert len(charged) == 5
    for server in fleet:  # and it stays used up, whichever process is asked
        later = server.post("/v2/models/hazards/infer", json=fine(), headers=bearer(key))
        assert later.status_code == 429
