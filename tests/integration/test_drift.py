"""Drift on a real gateway: the classifier's traffic against the reference its build profiled, a shift that
crosses the thresholds (status flag, warning log, /metrics), a pinned reference, and what a restart keeps."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import FUNCTIONS
from tests.integration.server import Server, start_server

from slserve.snapshot import Artifact, ArtifactStore
from slserve_samples.classifier import dataset

SETTINGS = {"drift_window_s": "120", "drift_min_rows": "100"}  # the whole module's traffic stays in the window


@pytest.fixture(scope="module")
def functions(build_sample: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_sample("classifier")
    folder = tmp_path_factory.mktemp("drift-functions")
    shutil.copytree(FUNCTIONS / "classifier", folder / "classifier")
    return folder


@pytest.fixture(scope="module")
def server(functions: Path, sample_store: ArtifactStore) -> Iterator[Server]:
    srv = start_server(functions, sample_store.root, functions.parent / "serve-drift.log", **SETTINGS)
    yield srv
    srv.stop()


def send(server: Server, features: np.ndarray) -> None:
    for chunk in np.array_split(features, max(1, len(features) // 50)):
        body = {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.ravel().tolist()}
            ]
        }
        response = server.post("/v2/models/classifier/infer", json=body)
        assert response.status_code == 200, response.text


def version_drift(server: Server) -> dict[str, Any]:
    doc = server.get("/slserve/drift", params={"model": "classifier"}).json()
    return next(v for v in doc["versions"] if v["version"] == "1")


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_build_profiles_its_calibration_inputs(build_sample: Any) -> None:
    from slserve.drift.reference import reference_of

    artifact: Artifact = build_sample("classifier")
    reference = reference_of(artifact)
    assert reference is not None and reference.rows == 300
    assert set(reference.tensors) == {"input:features", "output:probabilities", "output:label"}
    assert reference.tensors["output:label"].kind == "classes"


def test_unshifted_traffic_stays_under_and_a_shift_crosses(server: Server) -> None:
    unshifted, _ = dataset(n_per_class=100, seed=11)
    send(server, unshifted)
    drift = version_drift(server)
    assert (drift["reference"], drift["state"], drift["rows"]) == ("build", "stable", 300), drift
    assert not any(s["drifting"] for s in drift["scores"])
    assert server.status("classifier")["drifting"] is False

    shifted = unshifted + np.float32(3.0)  # every feature moves by about two of its standard deviations
    send(server, np.concatenate([shifted, shifted]))
    drift = version_drift(server)
    assert drift["state"] == "drifting", drift
    worst = {s["measure"]: s for s in drift["scores"] if s["tensor"] == "input:features"}["mean_shift"]
    assert worst["value"] > 1.0 and worst["drifting"]
    # The status flag and the warning follow within one step of the window (a tenth of it: 12 s here).
    wait_for(lambda: server.status("classifier")["drifting"] is True, "the status flag")
    assert "classifier version 1 is drifting from its build reference" in server.log.read_text()
    metrics = server.get("/metrics").text
    assert 'slserve_drifting{model="classifier",version="1"} 1.0' in metrics
    assert 'slserve_drift_score{measure="mean_shift",model="classifier",tensor="input:features",version="1"}' in metrics


def test_a_pinned_reference_replaces_the_build_s_and_survives_a_restart(
    server: Server, functions: Path, sample_store: ArtifactStore
) -> None:
    shifted = dataset(n_per_class=100, seed=12)[0] + np.float32(3.0)
    send(server, shifted)
    pinned = server.post("/slserve/drift/pin", json={"model": "classifier"}).json()
    assert pinned["reference"] == "pinned" and pinned["state"] == "stable", pinned
    assert (server.state / "drift" / "classifier@1.json").is_file()
    server.stop()
    again = start_server(
        functions, sample_store.root, functions.parent / "serve-drift-2.log", state=server.state, **SETTINGS
    )
    try:
        send(again, dataset(n_per_class=50, seed=13)[0] + np.float32(3.0))  # the window refills from new traffic
        drift = version_drift(again)
        assert (drift["reference"], drift["rows"], drift["state"]) == ("pinned", 150, "stable"), drift
        send(again, dataset(n_per_class=100, seed=14)[0])  # back where the build's reference was: a shift now
        assert version_drift(again)["state"] == "drifting"
    finally:
        again.stop()
