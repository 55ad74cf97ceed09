"""One gateway, the `modal` target: a premium function served by its Modal endpoint (here slserve's real endpoint
app behind a stand-in for Modal's front, over HTTP), the economy one locally; auth, Modal's failures, the tier's
fallback and the ledger."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.conftest import BOTH_TIERS, FUNCTIONS, write_function
from tests.integration.modal_peer import Peer, start_peer
from tests.integration.server import Server, start_server

from slserve.build.function import build_function
from slserve.compose.catalog import build_pipeline
from slserve.compose.spec import load_pipeline
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions, load_function

SECRET = "s3cret-for-the-tests"
BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": [0.1, 0.2, 0.3, 0.4] * 2}]}
PREMIUM = {"x-slserve-tier": "premium"}


@pytest.fixture(scope="module")
def gateway(
    build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Peer]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("modal-target")
    classifier = (FUNCTIONS / "classifier" / "function.toml").read_text()
    functions = root / "functions"
    write_function(functions, "classifier", classifier)
    gpu = 'target = "modal"\n' + classifier.replace('tier = "economy"', 'tier = "premium"')
    write_function(functions, "classifier-gpu", gpu)
    for name in ("classifier", "classifier-gpu"):
        build_function(load_function(functions / name), sample_store)
    (functions / "both-tiers").mkdir()
    (functions / "both-tiers" / "pipeline.toml").write_text(BOTH_TIERS)
    build_pipeline(load_pipeline(functions / "both-tiers"), discover_functions(functions), sample_store)
    peer = start_peer(sample_store.root, "classifier-gpu", SECRET, root / "peer.log")
    srv = start_server(functions, sample_store.root, root / "serve.log", modal_url=peer.url, modal_secret=SECRET)
    yield srv, peer
    srv.stop()
    peer.proc.terminate()
    peer.proc.wait(10)


def functions_of(server: Server) -> Path:
    """The gateway's own --functions folder, for a second gateway on the same functions."""
    args = [str(a) for a in server.proc.args]  # type: ignore[union-attr]
    return Path(args[args.index("--functions") + 1])


def ledger(server: Server, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.state / "ledger.sqlite") as db:
        db.row_factory = sqlite3.Row
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the writer commits in groups: wait for this record's
            row = db.execute("SELECT * FROM records WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                return dict(row)
            time.sleep(0.05)
    raise AssertionError(f"no ledger record for {request_id}")


def test_a_modal_function_answers_as_the_local_one_and_is_metered(gateway: tuple[Server, Peer]) -> None:
    server, peer = gateway
    peer.mode("normal")
    local = server.post("/v2/models/classifier/infer", json=BODY)
    remote = server.post("/v2/models/classifier/infer", json=BODY, headers=PREMIUM)
    assert local.status_code == remote.status_code == 200, remote.text
    assert remote.headers["x-slserve-function"] == "classifier-gpu" and remote.headers["x-slserve-tier"] == "premium"
    for a, b in zip(local.json()["outputs"], remote.json()["outputs"], strict=True):
        assert a["name"] == b["name"] and np.array_equal(np.asarray(a["data"]), np.asarray(b["data"]))
    assert "x-slserve-cold-start-ms" in remote.headers  # the container's first answer
    record = ledger(server, remote.headers["x-request-id"])
    assert record["function"] == "classifier-gpu" and record["tier"] == "premium" and record["status"] == 200
    assert (
        record["cold_start"] == 1
        and record["compute_ms"] > 0
        and record["price"] == int(remote.headers["x-slserve-cost"])
    )
    again = server.post("/v2/models/classifier/infer", json=BODY, headers=PREMIUM)
    assert "x-slserve-cold-start-ms" not in again.headers
    status = server.status("classifier-gpu")
    assert status["target"] == "modal" and status["served"] >= 2 and status["cold_starts"] == 1


def test_the_endpoint_answers_only_the_gateways_secret(gateway: tuple[Server, Peer]) -> None:
    _, peer = gateway
    peer.mode("normal")
    url = f"{peer.url}/v2/models/classifier/infer"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": SECRET}):
        r = httpx.post(url, json=BODY, headers=headers, timeout=10)
        assert r.status_code == 401 and "secret" in r.json()["error"], r.text
    ok = httpx.post(url, json=BODY, headers={"authorization": f"Bearer {SECRET}"}, timeout=10)
    assert ok.status_code == 200 and ok.headers["x-slserve-function"] == "classifier-gpu"


@pytest.mark.parametrize(
    ("mode", "direct_status", "says"),
    [("throttle", 429, "retry later"), ("down", 503, "answered 502")],
)
def test_modals_failures_fall_back_to_a_cheaper_tier_and_are_metered_there(
    gateway: tuple[Server, Peer], mode: str, direct_status: int, says: str
) -> None:
    server, peer = gateway
    peer.mode(mode)
    try:
        direct = server.post("/v2/models/classifier-gpu/infer", json=BODY)  # that function alone: no fallback
        assert direct.status_code == direct_status and says in direct.json()["error"], direct.text
        if direct_status == 429:
            assert direct.headers["retry-after"] == "3"
        r = server.post("/v2/models/classifier/infer", json=BODY, headers=PREMIUM)
        assert r.status_code == 200, r.text
        assert r.headers["x-slserve-fallback"] == "classifier-gpu->classifier"
        record = ledger(server, r.headers["x-request-id"])
        assert record["function"] == "classifier" and record["tier"] == "economy" and record["status"] == 200
        assert record["fallback"] == "classifier-gpu->classifier" and record["price"] == int(
            r.headers["x-slserve-cost"]
        )
    finally:
        peer.mode("normal")


def test_a_slow_endpoint_meets_the_requests_deadline(gateway: tuple[Server, Peer]) -> None:
    server, peer = gateway
    peer.mode("slow", delay_s=3.0)
    try:
        r = server.post("/v2/models/classifier-gpu/infer", json=BODY, headers={"x-slserve-timeout-ms": "400"})
        assert r.status_code == 504 and "deadline" in r.json()["error"], r.text
        record = ledger(server, r.headers["x-request-id"])
        assert record["status"] == 504 and record["price"] == 0
    finally:
        peer.mode("normal")
    assert server.post("/v2/models/classifier-gpu/infer", json=BODY).status_code == 200


def test_a_wrong_secret_is_said_plainly(
    gateway: tuple[Server, Peer], sample_store: ArtifactStore, tmp_path: Path
) -> None:
    server, peer = gateway
    functions = functions_of(server)
    srv = start_server(functions, sample_store.root, tmp_path / "serve.log", modal_url=peer.url, modal_secret="nope")
    try:
        r = srv.post("/v2/models/classifier-gpu/infer", json=BODY)
        assert r.status_code == 503 and "SLSERVE_MODAL_SECRET" in r.json()["error"], r.text
    finally:
        srv.stop()


def test_without_its_settings_the_target_is_refused_with_what_to_set(
    gateway: tuple[Server, Peer], sample_store: ArtifactStore, tmp_path: Path
) -> None:
    server, _ = gateway
    functions = functions_of(server)
    srv = start_server(functions, sample_store.root, tmp_path / "serve.log")
    try:
        r = srv.post("/v2/models/classifier-gpu/infer", json=BODY)
        assert r.status_code == 503 and "SLSERVE_MODAL_URL" in r.json()["error"], r.text
        assert srv.post("/v2/models/classifier/infer", json=BODY).status_code == 200  # the local one serves on
    finally:
        srv.stop()


def test_a_pipeline_step_runs_on_another_target(gateway: tuple[Server, Peer]) -> None:
    server, peer = gateway
    peer.mode("normal")
    response = server.post("/v2/models/both-tiers/infer", json=BODY)
    assert response.status_code == 200, response.text
    steps = {s["name"]: s for s in response.json()["parameters"]["steps"]}
    assert (steps["here"]["function"], steps["there"]["function"]) == ("classifier", "classifier-gpu")
    assert (steps["here"]["tier"], steps["there"]["tier"]) == ("economy", "premium")
    both = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 6)
    assert np.array_equal(both[:, :3], both[:, 3:])  # the same model on two targets, the same bytes
    record = ledger(server, response.headers["x-request-id"])
    assert record["model"] == "both-tiers" and record["price"] == steps["here"]["cost"] + steps["there"]["cost"]
