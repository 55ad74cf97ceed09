"""One tenant cannot slow another: a hostile key holder's big, slow or many uploads against a live gateway, beside
a bystander tenant calling a small function every 50 ms, the gateway's memory sampled every 100 ms.

The properties, relative to the bystander's own latency measured in the same run (never a wall-clock constant
alone): 95% of its requests during the attacks within 5x its quiet p50 (or 250 ms, whichever is larger) and
none stalled past a second; the
gateway's resident memory growing by less than its in-flight body budget; every attack request refused with the
status and the limit that refused it.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import pytest
from tests.integration.server import Server, start_server
from tests.reliability.hazards import bearer, fine

from slserve.accounts.keys import new_key
from slserve.snapshot import ArtifactStore

pytestmark = pytest.mark.slow
BUDGET_MB = 48
HEAD_S = 2  # the gateway's head_timeout_s


def rss_mb(server: Server) -> float:
    """What the gateway holds resident: its process, or all its front workers together."""
    total = 0.0
    for pid in server.fronts():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def call_steadily(url: str, key: str, calling: Event, stop: Event, out: Queue[tuple[list[float], list[int]]]) -> None:
    """The bystander's calls, one every 50 ms until `stop`, in a process of its own: the attackers' threads in
    the test's process would otherwise delay it by holding the test's GIL, which no gateway could prevent."""
    latencies: list[float] = []
    failures: list[int] = []
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            r = client.post(url + "/v2/models/hazards/infer", json=fine(), headers=bearer(key))
            latencies.append(time.perf_counter() - started)
            if r.status_code != 200:
                failures.append(r.status_code)
            calling.set()
            stop.wait(0.05)
    out.put((latencies, failures))


class Bystander:
    """Another tenant's steady traffic (a process of its own), and the gateway's memory, sampled while the
    attacks run."""

    def __init__(self, server: Server, key: str) -> None:
        self.server, self.key = server, key
        self.latencies: list[float] = []
        self.failures: list[int] = []
        self.peak_mb = 0.0
        spawn = multiprocessing.get_context("spawn")
        self._calling, self._stop, self._out = spawn.Event(), spawn.Event(), spawn.Queue()
        args = (server.url, key, self._calling, self._stop, self._out)
        self._caller = spawn.Process(target=call_steadily, args=args)
        self._sampler = threading.Thread(target=self._sample)

    def quiet_p50(self, n: int = 40) -> float:
        with httpx.Client(timeout=30) as client:
            times = []
            for _ in range(n):
                started = time.perf_counter()
                client.post(self.server.url + "/v2/models/hazards/infer", json=fine(), headers=bearer(self.key))
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def assert_unslowed(self, quiet: float) -> None:
        """Its calls during the attacks: 95% within 5x its quiet p50 (or 250 ms), none stalled for a second (20x
        its quiet p50, if more). Not the single slowest against 5x: on a host loaded to 6-8 (the suite's own
        bar), the scheduler alone delays one call in a hundred past 250 ms, attack or none."""
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        assert p95 <= max(5 * quiet, 0.25), (p95, quiet)
        assert ordered[-1] <= max(20 * quiet, 1.0), (ordered[-1], quiet)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb(self.server))
            self._stop.wait(0.1)

    def __enter__(self) -> Bystander:
        self._caller.start()
        self._sampler.start()
        assert self._calling.wait(60), "the bystander's process did not start calling"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies, self.failures = self._out.get(timeout=120)
        self._caller.join()
        self._sampler.join()


def upload(
    url: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    bytes_per_s: float | None = None,
    together: threading.Barrier | None = None,
) -> int:
    """POST over a raw socket, reading the answer as soon as it comes (a gateway that refuses a body by its
    declared length answers before the body is sent, and closes); returns the status, or 0 if none came.
    `together`: the headers go first, the bodies once every upload of the barrier has sent its headers."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    if together is not None:
        together.wait(30)
    sock.setblocking(False)
    answer = b""
    sent, step = 0, 1 if bytes_per_s else 1 << 20
    try:
        while sent < len(body) and b"\r\n" not in answer:
            try:
                answer += sock.recv(65536)
                if not answer:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(body[sent : sent + step])
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                if b"\r\n" not in answer:
                    time.sleep(0.001)
            if bytes_per_s:
                time.sleep(step / bytes_per_s)
        sock.setblocking(True)
        sock.settimeout(30)
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def gateway(hazard_functions: tuple[Path, ArtifactStore], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    functions, store = hazard_functions
    log = tmp_path_factory.mktemp("noisy") / "serve.log"
    srv = start_server(
        functions, store.root, log, inflight_body_mb=str(BUDGET_MB), upload_grace_s="1", head_timeout_s=str(HEAD_S)
    )
    yield srv
    srv.stop()


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _attacks() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Bodies within the server's 64 MB, each over what its function can take."""
    numbers = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,16],"data":[' + b"0.5," * 4_000_000 + b"0.5]}]}"
    texts = _json({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [64, 250000], "data": ["a"] * 4_000_000}]})
    binary_elements = 4_000_000
    binary = b"".join(struct.pack("<I", 1) + b"a" for _ in range(binary_elements))
    header = _json(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [binary_elements],
                    "parameters": {"binary_data_size": len(binary)},
                }
            ]
        }
    )
    long_text = _json({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a" * 3_000_000]}]})
    return {
        "numbers": ("/v2/models/hazards/infer", numbers, {}),
        "texts": ("/v2/models/words/infer", texts, {}),
        "binary": ("/v2/models/words/infer", header + binary, {"Inference-Header-Content-Length": str(len(header))}),
        "long text": ("/v2/models/words/infer", long_text, {}),
    }


def test_bodies_over_what_a_function_takes_are_refused_before_they_cost_anyone(gateway: Server) -> None:
    attacker, bystander = (gateway.keys().create(new_key(t)) for t in ("attacker", "bystander"))
    watch = Bystander(gateway, bystander)
    quiet = watch.quiet_p50()
    before = rss_mb(gateway)
    statuses: dict[str, list[int]] = {}
    attacks = _attacks()
    with watch:
        for name, (path, body, extra) in attacks.items():
            headers = {"Content-Type": "application/json", **bearer(attacker), **extra}
            statuses[name] = [upload(gateway.url, path, headers, body) for _ in range(3)]
    print(f"over-limit bodies: bystander quiet p50 {quiet * 1000:.1f} ms, max {max(watch.latencies) * 1000:.1f} ms; "
          f"gateway RSS {before:.0f} -> {watch.peak_mb:.0f} MB")  # fmt: skip
    assert all(s == [413, 413, 413] for s in statuses.values()), statuses
    assert not watch.failures
    watch.assert_unslowed(quiet)
    assert watch.peak_mb - before < BUDGET_MB, (before, watch.peak_mb)


def test_a_crowd_of_uploads_is_held_to_the_budget_and_slow_ones_are_cut(gateway: Server) -> None:
    attacker, bystander = (gateway.keys().create(new_key(t)) for t in ("crowd", "bystander-2"))
    watch = Bystander(gateway, bystander)
    quiet = watch.quiet_p50()
    before = rss_mb(gateway)
    # Under what `words` takes (about 5 MB): 32 texts of 60 KB, 1.9 MB; 40 at once are 77 MB, over the budget and
    # over the tenant's share of it (a quarter).
    # Their datatype is wrong, so each costs its upload and its decode, and no model time.
    texts = ["word " * 12_000] * 32
    body = _json({"inputs": [{"name": "text", "datatype": "FP32", "shape": [32], "data": texts}]})
    headers = {"Content-Type": "application/json", **bearer(attacker)}
    # Another tenant's slow uploads, 5 x 0.5 MB: within its share of the budget (a quarter), cut for their pace.
    slow_body = _json({"inputs": [{"name": "text", "datatype": "FP32", "shape": [8], "data": texts[:8]}]})
    slow_headers = {**headers, **bearer(gateway.keys().create(new_key("slow")))}
    with watch, ThreadPoolExecutor(40) as pool:
        together = threading.Barrier(40)
        path = "/v2/models/words/infer"
        crowd = list(pool.map(lambda _: upload(gateway.url, path, headers, body, together=together), range(40)))
        slow = list(pool.map(lambda _: upload(gateway.url, path, slow_headers, slow_body, 200), range(5)))
    assert set(crowd) <= {400, 503} and 503 in crowd, crowd  # the budget refused what would pass it
    assert slow == [408] * 5, slow
    assert not watch.failures
    watch.assert_unslowed(quiet)
    print(f"crowd: bystander quiet p50 {quiet * 1000:.1f} ms, max {max(watch.latencies) * 1000:.1f} ms; gateway RSS "
          f"{before:.0f} -> {watch.peak_mb:.0f} MB; {crowd.count(503)} of 40 refused by the budget")  # fmt: skip
    assert watch.peak_mb - before < BUDGET_MB, (before, watch.peak_mb)  # bodies and their decoding, in the budget


def send_head(url: str, head: bytes, bytes_per_s: float | None = None) -> int:
    """Send a request's head (in 64 KiB pieces, or trickled at `bytes_per_s`) until the gateway answers; returns
    the status, or 0 if the connection closed without one."""
    host, port = url.removeprefix("http://").split(":")
    step = 1 if bytes_per_s else 65536
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setblocking(False)
        answer, sent = b"", 0
        while b"\r\n" not in answer:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if sent < len(head):
                try:
                    sent += sock.send(head[sent : sent + step])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
            time.sleep(step / bytes_per_s if bytes_per_s else 0.001)
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_huge_and_trickled_heads_are_refused_without_holding_memory_or_connections(gateway: Server) -> None:
    """Heads the ASGI app never sees: headers of 8 MB each from 40 connections at once, 40 heads trickled a byte
    at a time, 20 connections that send nothing."""
    bystander = gateway.keys().create(new_key("bystander-3"))
    watch = Bystander(gateway, bystander)
    quiet = watch.quiet_p50()
    before = rss_mb(gateway)
    start = b"POST /v2/models/hazards/infer HTTP/1.1\r\nHost: x\r\n"
    huge = start + b"X-Padding: " + b"a" * (8 << 20) + b"\r\n\r\n"
    trickled = start + b"X-Padding: " + b"a" * 1000 + b"\r\n\r\n"
    with watch, ThreadPoolExecutor(100) as pool:
        big = pool.map(lambda _: send_head(gateway.url, huge), range(40))
        slow = pool.map(lambda _: send_head(gateway.url, trickled, bytes_per_s=20), range(40))
        silent = pool.map(lambda _: send_head(gateway.url, b""), range(20))
        statuses = {"huge": list(big), "trickled": list(slow), "silent": list(silent)}
    print(f"heads: bystander quiet p50 {quiet * 1000:.1f} ms, max {max(watch.latencies) * 1000:.1f} ms; gateway RSS "
          f"{before:.0f} -> {watch.peak_mb:.0f} MB")  # fmt: skip
    assert statuses == {"huge": [431] * 40, "trickled": [408] * 40, "silent": [408] * 20}, statuses
    assert not watch.failures
    watch.assert_unslowed(quiet)
    assert watch.peak_mb - before < 40 * 0.5, (before, watch.peak_mb)  # at most a read past 32 KiB per connection
