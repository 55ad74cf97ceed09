"""`slserve serve --workers 2`: two front processes on one port and one platform process. Pools and batches stay
whole across the fronts, a key's limits and Idempotency-Keys hold whichever front takes a request, and a front or
the platform killed is started again while the rest serves on."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.integration.server import Server, start_server
from tests.reliability.hazards import TIMEOUT_S, bearer, fine, ledger_rows, sleeping, texts

from slserve.accounts.keys import new_key
from slserve.snapshot import ArtifactStore


@pytest.fixture(scope="module")
def workers(hazard_functions: tuple[Path, ArtifactStore], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    functions, store = hazard_functions
    root = tmp_path_factory.mktemp("workers")
    srv = start_server(functions, store.root, root / "serve.log", workers=2, request_timeout_s=str(TIMEOUT_S))
    yield srv
    srv.stop()


def _fronts(server: Server) -> dict[int, str]:
    return {p: t for p, t in server.tree().items() if t.startswith("slserve front")}


def _platform(server: Server) -> int:
    return next(p for p, t in server.tree().items() if t.startswith("slserve platform"))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _accepted_by(server: Server, client_port: int) -> int:
    """Which front holds the server end of the connection from `client_port` (from /proc/net/tcp)."""
    server_port = int(server.url.rsplit(":", 1)[1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return next(pid for pid in _fronts(server) if inode in _socket_inodes(pid))
    raise AssertionError(f"no server end for client port {client_port}")


class Connection:
    """One kept-alive HTTP connection, and the front that accepted it."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.connect()
        self.conn.request("GET", "/v2/health/live")
        self.conn.getresponse().read()
        self.front = _accepted_by(server, self.conn.sock.getsockname()[1])

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **headers})
        reply = self.conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers=headers)
        reply = self.conn.getresponse()
        return reply.status, reply.read()

    def close(self) -> None:
        self.conn.close()


def _on_each_front(server: Server, per_front: int) -> list[Connection]:
    """`per_front` connections accepted by each front (the kernel spreads new connections over their sockets)."""
    by_front: dict[int, list[Connection]] = {pid: [] for pid in _fronts(server)}
    spare: list[Connection] = []
    for _ in range(200):
        if all(len(held) >= per_front for held in by_front.values()):
            break
        conn = Connection(server)
        held = by_front.setdefault(conn.front, [])
        (held if len(held) < per_front else spare).append(conn)
    for conn in spare:
        conn.close()
    assert all(len(held) >= per_front for held in by_front.values()), "the kernel never spread the connections"
    return [conn for held in by_front.values() for conn in held]


def _until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.05)


def test_two_fronts_and_one_platform_process(workers: Server) -> None:
    assert len(_fronts(workers)) == 2
    assert _platform(workers)


def test_requests_through_both_fronts_queue_in_one_pool_and_batch_in_one_instance(workers: Server) -> None:
    """hazards-eco runs one instance at most: while it sleeps on one request, four from each front queue for it,
    and at least one batch holds requests of both (more than either front sent)."""
    key = workers.keys().create(new_key("workers-batch"))
    conns = _on_each_front(workers, 4)
    blocker = Connection(workers)
    path = "/v2/models/hazards-eco/infer"
    with ThreadPoolExecutor(len(conns) + 1) as pool:
        asleep = pool.submit(blocker.post, path, sleeping(1.0), bearer(key))
        _until(lambda: workers.status("hazards-eco")["in_flight"] >= 1)
        replies = list(pool.map(lambda c: c.post(path, fine(), bearer(key)), conns))
        assert asleep.result()[0] == 200
    assert [status for status, _, _ in replies] == [200] * 8, [body for _, _, body in replies]
    assert len({headers["x-slserve-instance"] for _, headers, _ in replies}) == 1
    assert max(int(headers["x-slserve-batch-size"]) for _, headers, _ in replies) > 4
    status = workers.status("hazards-eco")
    assert len(status["instances"]) == 1
    for conn in [*conns, blocker]:
        conn.close()


def _answered(scrape: bytes, model: str) -> float:
    """slserve_requests_total of `model` answered 200, over its label sets."""
    total = 0.0
    for line in scrape.decode().splitlines():
        if line.startswith("slserve_requests_total{") and f'model="{model}"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_from_either_front_count_every_fronts_requests(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-metrics"))
    conns = _on_each_front(workers, 2)
    status, before = conns[0].get("/metrics", workers.auth)
    assert status == 200
    for conn in conns:
        assert conn.post("/v2/models/words/infer", texts("counted"), bearer(key))[0] == 200
    for conn in conns:  # each front answers for the host
        status, after = conn.get("/metrics", workers.auth)
        assert _answered(after, "words") - _answered(before, "words") == len(conns)
    for conn in conns:
        conn.close()


def test_the_dashboard_counts_every_fronts_requests(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-dashboard"))
    conns = _on_each_front(workers, 2)
    for conn in conns:
        assert conn.post("/v2/models/fragile/infer", fine(), bearer(key))[0] == 200
        conn.close()

    def shown() -> int:
        recent = workers.get("/slserve/overview").json()["recent"]
        return int(recent.get("fragile", {}).get("requests", 0))

    _until(lambda: shown() == len(conns), 30)  # each front hands its seconds over once they end


def test_a_keys_concurrency_is_one_count_across_fronts(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-concurrency", concurrency=2))
    conns = _on_each_front(workers, 3)
    with ThreadPoolExecutor(len(conns)) as pool:
        replies = list(pool.map(lambda c: c.post("/v2/models/hazards/infer", sleeping(1.0), bearer(key)), conns))
    statuses = sorted(status for status, _, _ in replies)
    assert statuses == [200, 200, 429, 429, 429, 429], [body for _, _, body in replies]
    refused = next(body for status, _, body in replies if status == 429)
    assert b"concurrent" in refused or b"concurrency" in refused
    for conn in conns:
        conn.close()


def test_racing_duplicates_on_both_fronts_run_once_and_are_charged_once(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-idem"))
    headers = {**bearer(key), "Idempotency-Key": "order-workers-1"}
    conns = _on_each_front(workers, 4)
    with ThreadPoolExecutor(len(conns)) as pool:
        replies = list(pool.map(lambda c: c.post("/v2/models/hazards/infer", sleeping(0.4), headers), conns))
    assert [status for status, _, _ in replies] == [200] * 8, [body for _, _, body in replies]
    assert len({h["x-request-id"] for _, h, _ in replies}) == 1
    assert len({body for _, _, body in replies}) == 1
    rows = ledger_rows(workers.state, "tenant = 'workers-idem'")
    assert [(status, price > 0) for _, status, price, _ in rows] == [(200, True)]
    for conn in conns:
        conn.close()


def test_a_front_killed_is_started_again_while_the_other_serves(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-front-crash"))
    before = _fronts(workers)
    victim = next(iter(before))
    os.kill(victim, signal.SIGKILL)
    answered = [workers.post("/v2/models/hazards/infer", json=fine(), headers=bearer(key)) for _ in range(5)]
    assert [r.status_code for r in answered] == [200] * 5, [r.text for r in answered]
    _until(lambda: len(_fronts(workers)) == 2 and victim not in _fronts(workers))
    rows = ledger_rows(workers.state, "tenant = 'workers-front-crash'")
    assert sorted(r[0] for r in rows) == sorted(r.headers["x-request-id"] for r in answered)
    for conn in _on_each_front(workers, 1):  # the new front takes connections too
        conn.close()


def test_the_platform_killed_is_started_again_and_the_fronts_reconnect(workers: Server) -> None:
    key = workers.keys().create(new_key("workers-platform-crash"))
    victim = _platform(workers)
    os.kill(victim, signal.SIGKILL)

    def serving() -> bool:
        reply = workers.post("/v2/models/hazards/infer", json=fine(), headers=bearer(key))
        assert reply.status_code in (200, 503), reply.text  # while it restarts: 503, with when to retry
        if reply.status_code == 503:
            assert "retry-after" in reply.headers or "retry" in reply.text
        return reply.status_code == 200

    _until(serving)
    assert _platform(workers) != victim
    for conn in _on_each_front(workers, 1):  # both fronts reached the new platform
        status, _, body = conn.post("/v2/models/hazards/infer", fine(), bearer(key))
        assert status == 200, body
        conn.close()


def test_sigterm_stops_every_process_and_forgets_the_address(
    hazard_functions: tuple[Path, ArtifactStore], tmp_path: Path
) -> None:
    functions, store = hazard_functions
    srv = start_server(functions, store.root, tmp_path / "serve.log", workers=2)
    assert (srv.state / "gateway.json").is_file()
    started = set(srv.tree())
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=60) == 0
    _until(lambda: not any(_alive(pid) for pid in started), 30)
    assert not (srv.state / "gateway.json").exists()


def test_a_supervisor_killed_takes_its_workers_with_it(
    hazard_functions: tuple[Path, ArtifactStore], tmp_path: Path
) -> None:
    functions, store = hazard_functions
    srv = start_server(functions, store.root, tmp_path / "serve.log", workers=2)
    started = set(srv.tree())
    srv.proc.kill()
    srv.proc.wait()
    _until(lambda: not any(_alive(pid) for pid in started), 60)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"
