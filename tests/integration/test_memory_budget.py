"""The host's memory budget holds with real processes: functions whose instances hold working memory of their own
(`slserve_samples.cached`), more of them than fit, called in turn and then all at once. The memory the server's
process tree holds (PSS, read by the test itself) never passes the budget, idle instances are stopped to make
room, requests that cannot get memory in time are refused with a 503 naming the budget, and nothing is killed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import write_function
from tests.integration.server import Server, start_server

from slserve.build.function import build_function
from slserve.platform.local.memory import tree_pss
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function
from slserve_samples.cached import WORKING_MB, cached_function

pytestmark = pytest.mark.slow

FUNCTIONS = 6
FITS = 5  # the budget beyond the server's own processes, in units of an instance's working memory and 16 MB

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


class PeakMemory:
    """The PSS of a server's whole process tree, read every few tens of milliseconds; its highest reading."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.readings = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> int | None:
        return tree_pss(self.pid)

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            reading = self.now()
            if reading is not None:
                self.peak, self.readings = max(self.peak, reading), self.readings + 1


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArtifactStore]:
    root = tmp_path_factory.mktemp("budget")
    store = ArtifactStore(root / "artifacts")
    for i in range(FUNCTIONS):
        folder = write_function(root / "functions", f"cached-{i}", cached_function(f"cached-{i}", i, 600))
        build_function(load_function(folder), store)
    return root / "functions", store


@pytest.fixture(scope="module")
def server(functions: tuple[Path, ArtifactStore]) -> Iterator[tuple[Server, int]]:
    """A server whose budget leaves `FITS` instances room beyond what its own processes hold at rest (read from
    a first server with no budget to speak of)."""
    folder, store = functions
    first = start_server(folder, store.root, folder.parent / "first.log")
    try:
        at_rest = None
        while at_rest is None:
            at_rest = PeakMemory(first.proc.pid).now()
    finally:
        first.stop()
    budget = at_rest + int(FITS * (WORKING_MB + 16) * (1 << 20))
    srv = start_server(folder, store.root, folder.parent / "serve.log", memory_budget_mb=str(budget / (1 << 20)))
    yield srv, budget
    srv.stop()


async def call_all_at_once(server: Server, rounds: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, headers=server.auth) as client:
        calls = [
            client.post(f"{server.url}/v2/models/cached-{i}/infer", json=BODY)
            for _ in range(rounds)
            for i in range(FUNCTIONS)
        ]
        return list(await asyncio.gather(*calls))


def test_the_budget_holds_one_function_after_another_and_all_at_once(server: tuple[Server, int]) -> None:
    srv, budget = server
    with PeakMemory(srv.proc.pid) as memory:
        for _ in range(2):
            for i in range(FUNCTIONS):  # one after another: each start makes room by stopping an idle one
                r = srv.post(f"/v2/models/cached-{i}/infer", json=BODY)
                assert r.status_code == 200, r.text
        answers = asyncio.run(call_all_at_once(srv, rounds=3))
    assert memory.readings > 10
    assert memory.peak <= budget, f"peak {memory.peak >> 20} MB over the budget of {budget >> 20} MB"
    refused = [r for r in answers if r.status_code != 200]
    for r in refused:  # refused, never failed: the budget named, with when to come back
        assert r.status_code == 503 and r.json()["code"] == "memory_budget", r.text
        assert "memory budget" in r.json()["error"] and "memory_budget_mb" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
    assert len(refused) < len(answers)
    doc = srv.get("/slserve/functions").json()
    host = doc["host"]["memory"]
    assert host["evictions"] >= FUNCTIONS  # (its own peak counts what it promised starting instances too)
    assert host["oom_kills"] in (None, 0)
    log = srv.log.read_text()
    assert "SIGKILL" not in log and "signal 9" not in log
    for f in doc["functions"]:
        assert f["keep_alive"]["keep_s"] <= 600 and f["memory_mb"] is not None
