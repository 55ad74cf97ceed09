"""Readiness tells the truth: a function whose artifact is corrupt is not ready (and says why) and is never
served; a crashed template process is restarted, and the instance exits it can no longer report cost no wait."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server import Server, start_server
from tests.integration.test_platform import wait_for
from tests.reliability.hazards import fine

from slserve.snapshot import ArtifactStore


def ready(server: Server, model: str) -> httpx.Response:
    return server.get(f"/v2/models/{model}/ready")


def weight_blob(store: ArtifactStore, function: str) -> Path:
    artifact = store.current(function)
    biggest = max(artifact.manifest.tensors.values(), key=lambda t: t.nbytes)
    return store.blobs.path(biggest.digest)


def test_a_corrupt_artifact_is_not_ready_and_not_served_until_it_is_intact(
    server: Server, hazard_functions: tuple[Path, ArtifactStore]
) -> None:
    _, store = hazard_functions
    assert wait_for(lambda: ready(server, "fragile").status_code == 200, timeout=10)
    assert server.post("/v2/models/fragile/infer", json=fine()).status_code == 200
    blob = weight_blob(store, "fragile")
    original = blob.read_bytes()
    os.chmod(blob, 0o644)
    try:
        blob.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # one flipped byte
        assert wait_for(lambda: ready(server, "fragile").status_code == 503, timeout=15)
        reason = ready(server, "fragile").json()["reason"]
        assert "checksum" in reason and str(blob) in reason
        r = server.post("/v2/models/fragile/infer", json=fine())
        assert r.status_code == 503 and "checksum" in r.json()["error"]
        assert r.json()["error"].count("fragile") == 1, r.json()["error"]  # named once, not three times
        assert server.get("/v2/health/ready").status_code == 200  # the others still serve
        assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    finally:
        blob.write_bytes(original)
        os.chmod(blob, 0o444)
    assert wait_for(lambda: ready(server, "fragile").status_code == 200, timeout=15)
    assert server.post("/v2/models/fragile/infer", json=fine()).status_code == 200


@pytest.fixture(scope="module")
def own_server(hazard_functions: tuple[Path, ArtifactStore]) -> Iterator[Server]:
    functions, store = hazard_functions
    srv = start_server(functions, store.root, functions.parent / "serve-template.log")
    yield srv
    srv.stop()


def template_pid(server: Server) -> int | None:
    return next((pid for pid, title in server.tree().items() if title.startswith("slserve template torch")), None)


@pytest.mark.slow
def test_a_killed_template_is_restarted_and_serving_resumes(own_server: Server) -> None:
    assert own_server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    old = template_pid(own_server)
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def says_torch_is_starting() -> bool:  # while the new template imports torch (seconds): per function
        health = httpx.get(own_server.url + "/v2/health/ready")
        model = ready(own_server, "hazards")
        return (
            health.status_code == 503
            and health.json()["functions"]["hazards"] is False
            and model.status_code == 503
            and "runtime (torch) is starting" in model.json()["reason"]
        )

    assert wait_for(says_torch_is_starting, timeout=30)
    assert wait_for(lambda: template_pid(own_server) not in (None, old), timeout=30)
    assert wait_for(lambda: httpx.get(own_server.url + "/v2/health/ready").status_code == 200, timeout=60)
    assert (
        own_server.post(
            "/v2/models/words/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["again"]}]},
        ).status_code
        == 200
    )
    # Instances forked by the dead template stop without a second's wait for an exit report that cannot come.
    for inst in own_server.status("hazards")["instances"]:
        os.kill(inst["pid"], signal.SIGKILL)
    assert wait_for(lambda: "its template process is gone" in own_server.log.read_text(), timeout=10)
    assert own_server.post("/v2/models/hazards/infer", json=fine()).status_code == 200


def test_a_function_whose_target_this_gateway_does_not_run_is_refused_with_the_reason(server: Server) -> None:
    r = server.post("/v2/models/remote/infer", json=fine())
    assert r.status_code == 503 and "names target 'aws'" in r.json()["error"], r.text
    assert "it runs: local" in r.json()["error"]
    status = server.status("remote")
    assert status["target"] == "aws" and not status["ready"] and "target 'aws'" in status["error"]
    not_ready = ready(server, "remote")
    assert not_ready.status_code == 503 and "target 'aws'" in not_ready.json()["reason"]
    health = server.get("/v2/health/ready")
    assert health.status_code == 200  # the rest of the house serves
    assert health.json()["functions"]["remote"] is False and health.json()["functions"]["hazards"] is True
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
