"""The embedded platform under load: scale from zero and back, queue bounds, dying instances, exact batching."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.conftest import FUNCTIONS, write_function
from tests.integration.server import Server, start_server

from slserve.build.agreement import CALIBRATION_TEXTS
from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function
from slserve_samples.faulty import SLEEP_SENTINEL

TINY = """
[model]
name = "{name}"

[source]
framework = "torch"
factory = "{factory}"
seed = 3

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 16]

[scaling]
{scaling}
"""

FUNCTIONS_UNDER_TEST = {
    "tiny-zero": ("slserve_samples.big_mlp:build_small", "idle_seconds = 1\nmax_instances = 3\ntarget_concurrency = 2"),
    "tiny-burst": ("slserve_samples.big_mlp:build_small", "max_instances = 3\ntarget_concurrency = 2"),
    "tiny-queue": ("slserve_samples.big_mlp:build_small", "max_instances = 1\ntarget_concurrency = 1\nqueue_size = 2"),
    "crashy": ("slserve_samples.faulty:build", "max_instances = 2\ntarget_concurrency = 4"),
    "slow-queue": (
        "slserve_samples.faulty:build_sleepy",
        "max_instances = 1\ntarget_concurrency = 1\nqueue_size = 6\n\n[batching]\nmax_batch_size = 1",
    ),
}
STALE = TINY.format(name="stale", factory="slserve_samples.big_mlp:build_small", scaling="max_instances = 1")
BROKEN = TINY.format(name="broken", factory="slserve_samples.faulty:build_broken", scaling="max_instances = 1")


@pytest.fixture(scope="module")
def server(build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    functions = tmp_path_factory.mktemp("functions")
    for name, (factory, scaling) in FUNCTIONS_UNDER_TEST.items():
        d = write_function(functions, name, TINY.format(name=name, factory=factory, scaling=scaling))
        build_function(load_function(d), sample_store)
    build_sample("minilm-torch")
    shutil.copytree(FUNCTIONS / "minilm-torch", functions / "minilm-torch")
    build_function(load_function(write_function(functions, "broken", BROKEN)), sample_store)
    stale = write_function(functions, "stale", STALE)
    build_function(load_function(stale), sample_store)
    (stale / "function.toml").write_text(STALE.replace('name = "stale"', 'name = "stale"\ndescription = "edited"'))
    srv = start_server(functions, sample_store.root, functions.parent / "serve-platform.log")
    yield srv
    srv.stop()
    log = srv.log.read_text()
    assert "Application shutdown complete" in log, log


def tiny_request(value: float = 0.5) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [value] * 16}]}


async def post_many(
    url: str, bodies: list[dict[str, Any]], concurrency: int, headers: dict[str, str]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict[str, Any]) -> httpx.Response:
            async with gate:
                return await client.post(url, json=body, headers=headers)

        return await asyncio.gather(*(one(b) for b in bodies))


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def retries_landed(server: Server, pid: int, served: int) -> None:
    def landed() -> bool:
        status = server.status("tiny-burst")
        return pid not in {i["pid"] for i in status["instances"]} and status["served"] >= served

    assert wait_for(landed, 60), server.status("tiny-burst")


def test_scale_from_zero_and_back_to_zero(server: Server) -> None:
    assert server.status("tiny-zero")["instances"] == []
    first = server.post("/v2/models/tiny-zero/infer", json=tiny_request())
    assert first.status_code == 200, first.text
    assert float(first.headers["x-slserve-cold-start-ms"]) > 0
    warm = server.post("/v2/models/tiny-zero/infer", json=tiny_request())
    assert "x-slserve-cold-start-ms" not in warm.headers
    [instance] = server.status("tiny-zero")["instances"]
    assert instance["state"] == "idle" and instance["preloaded"] is True
    title = Path(f"/proc/{instance['pid']}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert title.startswith(f"slserve instance {instance['name']} ({instance['artifact']})"), title  # as in ps
    gateway_nice = os.getpriority(os.PRIO_PROCESS, server.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, instance["pid"]) == min(19, gateway_nice + 5)  # models yield the CPU
    assert wait_for(lambda: server.status("tiny-zero")["instances"] == [], timeout=10), server.status("tiny-zero")
    again = server.post("/v2/models/tiny-zero/infer", json=tiny_request())
    assert "x-slserve-cold-start-ms" in again.headers
    assert server.status("tiny-zero")["cold_starts"] == 2


def test_a_burst_scales_out_to_max_instances_without_errors(server: Server) -> None:
    url = server.url + "/v2/models/tiny-burst/infer"
    responses = asyncio.run(
        post_many(url, [tiny_request(i / 100) for i in range(96)], concurrency=32, headers=server.auth)
    )
    assert [r.status_code for r in responses] == [200] * 96
    assert len(server.status("tiny-burst")["instances"]) == 3  # demand 32 / target 2, capped at max_instances
    assert wait_for(lambda: server.status("tiny-burst")["cold_starts"] == 3, timeout=30)
    assert len({r.headers["x-slserve-instance"] for r in responses}) >= 2


def test_a_full_queue_answers_429_with_retry_after(server: Server) -> None:
    url = server.url + "/v2/models/tiny-queue/infer"
    responses = asyncio.run(post_many(url, [tiny_request()] * 24, concurrency=24, headers=server.auth))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 2, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert "queue_size" in rejected.json()["error"]
    assert server.post("/v2/models/tiny-queue/infer", json=tiny_request()).status_code == 200


def test_retry_after_is_the_measured_time_to_work_off_the_queue(server: Server) -> None:
    """One instance that takes 0.4 s per request (2.5 rows/s) and a queue of 6: a client turned away should
    come back in 6 / 2.5 = 2.4 s, not in a fixed second."""
    url = server.url + "/v2/models/slow-queue/infer"
    data = [SLEEP_SENTINEL, 0.4] + [0.0] * 14
    sleepy = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": data}]}
    assert server.post("/v2/models/slow-queue/infer", json=sleepy).status_code == 200  # measures the speed
    responses = asyncio.run(post_many(url, [sleepy] * 12, concurrency=12, headers=server.auth))
    rejected = [r for r in responses if r.status_code == 429]
    assert rejected and all(r.status_code in (200, 429) for r in responses)
    assert {int(r.headers["retry-after"]) for r in rejected} <= {2, 3}, [r.headers["retry-after"] for r in rejected]


def test_kill_9_of_instances_during_a_stream_loses_no_request(server: Server) -> None:
    url = server.url + "/v2/models/tiny-burst/infer"
    total = 800

    async def stream_and_kill() -> tuple[list[httpx.Response], int]:
        load = asyncio.create_task(
            post_many(url, [tiny_request(i / total) for i in range(total)], concurrency=8, headers=server.auth)
        )
        killed = 0
        while killed < 2 and not load.done():
            await asyncio.sleep(0.05)
            for inst in (await asyncio.to_thread(server.status, "tiny-burst"))["instances"]:
                if inst["in_flight"] and inst["pid"]:
                    served = (await asyncio.to_thread(server.status, "tiny-burst"))["served"]
                    os.kill(inst["pid"], signal.SIGKILL)
                    killed += 1
                    # Let the retries land before the next kill (a request whose retry is killed too is a 502
                    # by design: retried once, not forever): the dead instance gone, and twice the clients'
                    # concurrency answered since.
                    await asyncio.to_thread(retries_landed, server, inst["pid"], served + 16)
                    break
        return await load, killed

    responses, killed = asyncio.run(stream_and_kill())
    assert killed >= 1, "the stream ended before an instance could be killed"
    assert [r.status_code for r in responses] == [200] * total


def test_an_input_that_kills_every_instance_is_refused_as_poison_and_others_are_served(server: Server) -> None:
    ok = server.post("/v2/models/crashy/infer", json=tiny_request(1.0))
    assert ok.status_code == 200
    bad = server.post("/v2/models/crashy/infer", json=tiny_request(-5000.0))
    assert bad.status_code == 500 and bad.json()["code"] == "poison_request", bad.text
    assert "(exit code 3)" in bad.json()["error"] and "alone" in bad.json()["error"]
    assert server.post("/v2/models/crashy/infer", json=tiny_request(2.0)).status_code == 200


def varied_texts(n: int, seed: int) -> list[list[str]]:
    """Requests of one to three sentences of 1 to 150 words (most token lengths were never seen at build)."""
    rng = random.Random(seed)
    words = " ".join(CALIBRATION_TEXTS).replace(".", "").replace("?", "").split()
    lengths = [1, 2, 3, 5, 8, 13, 21, 40, 80, 150]
    return [
        [" ".join(rng.choices(words, k=rng.choice(lengths))) for _ in range(rng.choice([1, 1, 2, 3]))] for _ in range(n)
    ]


def test_batching_is_exact(server: Server) -> None:
    url = server.url + "/v2/models/minilm/infer"
    requests = [[t] for t in CALIBRATION_TEXTS[:12]] + varied_texts(36, seed=7)
    bodies = [
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], "id": str(i)}
        for i, texts in enumerate(requests * 2)  # each request arrives twice, so equal shapes surely meet
    ]
    alone = asyncio.run(post_many(url, bodies, concurrency=1, headers=server.auth))
    together = asyncio.run(post_many(url, bodies, concurrency=len(bodies), headers=server.auth))
    for _ in range(3):  # on a loaded host some are refused to come back later (429/503 + Retry-After), as clients do
        again = [i for i, r in enumerate(together) if r.status_code in (429, 503) and "retry-after" in r.headers]
        if not again:
            break
        time.sleep(max(float(together[i].headers["retry-after"]) for i in again))
        retried = asyncio.run(post_many(url, [bodies[i] for i in again], len(again), headers=server.auth))
        for i, r in zip(again, retried, strict=True):
            together[i] = r
    assert all(r.status_code == 200 for r in alone + together), [
        (r.status_code, r.text[:200]) for r in alone + together if r.status_code != 200
    ]
    assert max(int(r.headers["x-slserve-batch-size"]) for r in together) > 1, "nothing was batched"
    for a, b in zip(alone, together, strict=True):
        assert a.json()["id"] == b.json()["id"]
        ea = np.asarray(a.json()["outputs"][0]["data"], dtype=np.float32)
        eb = np.asarray(b.json()["outputs"][0]["data"], dtype=np.float32)
        assert np.array_equal(ea, eb), f"{a.json()['id']}: max diff {np.abs(ea - eb).max()}"


def test_a_function_that_cannot_start_is_a_clear_503_and_others_keep_serving(server: Server) -> None:
    r = server.post("/v2/models/broken/infer", json=tiny_request())
    assert r.status_code == 503
    assert "cannot start an instance" in r.json()["error"] and "broken on purpose" in r.json()["error"]
    assert server.status("broken")["error"]
    assert server.post("/v2/models/tiny-burst/infer", json=tiny_request()).status_code == 200


def test_a_function_edited_since_its_build_serves_its_last_build_and_says_so(server: Server) -> None:
    """The same as an edit while the gateway runs (test_deploy): `slserve build` is the deploy."""
    r = server.post("/v2/models/stale/infer", json=tiny_request())
    assert r.status_code == 200, r.text
    status = server.status("stale")
    assert status["error"] is None and status["artifact"]
    assert "function.toml changed since the last build; run `slserve build stale`" in status["stale"]


def test_status_command_shows_the_pools(server: Server) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from slserve.cli import main; main()",
            "status",
            "--url",
            server.url,
            "--key",
            server.key,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert '"tiny-burst"' in out.stdout and '"cold_starts"' in out.stdout


def test_tiny_functions_are_in_the_store(sample_store: ArtifactStore) -> None:
    assert {"tiny-zero", "crashy"} <= set(sample_store.functions())
    assert Path(sample_store.root).is_dir()


def test_graceful_shutdown_finishes_accepted_requests(sample_store: ArtifactStore, tmp_path: Path) -> None:
    scaling = "max_instances = 1\ntarget_concurrency = 16"
    d = write_function(
        tmp_path / "functions",
        "slow",
        TINY.format(name="slow", factory="slserve_samples.faulty:build_slow", scaling=scaling),
    )
    build_function(load_function(d), sample_store)
    srv = start_server(tmp_path / "functions", sample_store.root, tmp_path / "serve.log")
    assert srv.post("/v2/models/slow/infer", json=tiny_request()).status_code == 200  # instance up

    async def load_then_stop() -> list[httpx.Response]:
        load = asyncio.create_task(
            post_many(srv.url + "/v2/models/slow/infer", [tiny_request()] * 8, concurrency=8, headers=srv.auth)
        )
        while (await asyncio.to_thread(srv.status, "slow"))["in_flight"] < 1:
            await asyncio.sleep(0.01)
        srv.proc.send_signal(signal.SIGINT)  # the requests are in flight: they must all complete
        return await load

    responses = asyncio.run(load_then_stop())
    assert [r.status_code for r in responses] == [200] * 8
    srv.proc.wait(timeout=60)
    log = srv.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log
