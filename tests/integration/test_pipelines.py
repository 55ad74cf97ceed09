"""Pipelines on a real gateway: the sample ticket-router (minilm -> a feature lookup -> concat -> triage) against
the same steps called by hand, independent steps at once, the ledger itemizing steps, errors naming the step,
and keys that do not open a step's model."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from tests.conftest import FUNCTIONS, ROOT, write_function
from tests.integration.server import Server, start_server

from slserve.accounts.keys import new_key
from slserve.build import build_function
from slserve.compose.catalog import build_pipeline
from slserve.compose.spec import load_pipeline
from slserve.gateway.v2 import HEADER_LENGTH, decode_outputs
from slserve.metering.ledger import SQLiteLedger
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions, load_function
from slserve_samples.faulty import MODEL_BUG, SLEEP, hazards_function

CUSTOMERS = ROOT / "samples" / "features" / "customers.csv"
FANOUT = """
[model]
name = "fanout"

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 16]

[[signature.outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 32]

[[steps]]
name = "left"
model = "slow-a"
inputs = { x = "x" }

[[steps]]
name = "right"
model = "slow-b"
inputs = { x = "x" }

[[steps]]
name = "both"
op = "concat"
inputs = ["left.y", "right.y"]

[outputs]
y = "both.output"
"""


@pytest.fixture(scope="module")
def server(sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    functions = tmp_path_factory.mktemp("functions")
    for name in ("minilm-onnx", "triage", "ticket-router"):
        shutil.copytree(FUNCTIONS / name, functions / name)
    for name in ("slow-a", "slow-b"):
        toml = hazards_function(max_delay_ms=0).replace('name = "hazards"', f'name = "{name}"')
        write_function(functions, name, toml)
    fanout = functions / "fanout"
    fanout.mkdir()
    (fanout / "pipeline.toml").write_text(FANOUT)
    for fdef in discover_functions(functions):
        build_function(load_function(fdef.directory), sample_store)
    for name in ("ticket-router", "fanout"):
        build_pipeline(load_pipeline(functions / name), discover_functions(functions), sample_store)
    srv = start_server(functions, sample_store.root, functions.parent / "serve-pipelines.log")
    load = [
        sys.executable,
        "-c",
        "from slserve.cli import main; main()",
        "features",
        "load",
        "customers",
        str(CUSTOMERS),
    ]
    subprocess.run([*load, "--state", str(srv.state)], check=True, capture_output=True)
    yield srv
    srv.stop()


def binary_request(inputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    from slserve.gateway.v2 import encode_request
    from slserve.platform.base import InferRequest

    return encode_request(InferRequest("", inputs))


def infer(server: Server, model: str, inputs: dict[str, np.ndarray], **headers: str) -> dict[str, np.ndarray]:
    body, head = binary_request(inputs)
    response = server.post(f"/v2/models/{model}/infer", content=body, headers={**head, **headers})
    assert response.status_code == 200, response.text
    return decode_outputs(response.content, response.headers.get(HEADER_LENGTH))


def customers() -> dict[str, np.ndarray]:
    with CUSTOMERS.open() as f:
        rows = list(csv.reader(f))[1:]
    return {r[0]: np.array([float(v) for v in r[1:]], dtype=np.float32) for r in rows}


TICKETS = [
    "My invoice charged me twice this month, please refund",
    "The API returns 500 errors since this morning, production is down!",
    "How do I change my password?",
]
IDS = ["c-0001", "c-0042", "c-0199"]


def tickets() -> dict[str, np.ndarray]:
    return {
        "text": np.array([t.encode() for t in TICKETS], dtype=object),
        "customer_id": np.array([i.encode() for i in IDS], dtype=object),
    }


def test_pipeline_answers_the_bytes_of_its_steps_called_by_hand(server: Server) -> None:
    got = infer(server, "ticket-router", tickets())
    embedding = infer(server, "minilm", {"text": tickets()["text"]})["embedding"]
    stored = customers()
    features = np.concatenate([embedding, np.stack([stored[i] for i in IDS])], axis=1)
    expected = infer(server, "triage", {"features": features})
    assert got["probabilities"].tobytes() == expected["probabilities"].tobytes()
    assert got["queue"].tobytes() == expected["queue"].tobytes()


def test_each_step_is_reported_and_the_ledger_itemizes_them(server: Server) -> None:
    response = server.post(
        "/v2/models/ticket-router/infer",
        json={
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Where is my order?"]},
                {"name": "customer_id", "datatype": "BYTES", "shape": [1], "data": ["c-0007"]},
            ]
        },
    )
    assert response.status_code == 200, response.text
    steps = response.json()["parameters"]["steps"]
    assert [s["name"] for s in steps] == ["embed", "customer", "joined", "triage"]
    model_steps = [s for s in steps if s["kind"] == "model"]
    assert {s["function"] for s in model_steps} == {"minilm-onnx", "triage"}
    cost = int(response.headers["x-slserve-cost"])
    assert cost == sum(s["cost"] for s in model_steps) > 0
    assert response.headers["x-slserve-steps"].startswith("embed;function=minilm-onnx;ms=")
    request_id = response.headers["x-request-id"]
    ledger = SQLiteLedger(server.state / "ledger.sqlite")
    try:
        row = ledger.db.execute("SELECT price, steps FROM records WHERE request_id = ?", (request_id,)).fetchone()
        assert row is not None and row[0] == cost
        usage = {(u.model, u.tier): u for u in ledger.usage(0, time.time() + 60)}
    finally:
        ledger.db.close()
    pipeline = usage["ticket-router", "standard"]
    assert {s.step for s in pipeline.steps} == {"embed", "triage"}
    assert sum(s.charged for s in pipeline.steps) == pipeline.charged  # the steps sum to the pipeline's charge
    assert all(s.requests == pipeline.requests for s in pipeline.steps)


def test_independent_steps_run_at_once(server: Server) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    infer(server, "fanout", {"x": x})  # both functions started
    x[0, :2] = [SLEEP, 1.0]  # each step's model sleeps a second
    started = time.perf_counter()
    response = server.post("/v2/models/fanout/infer", json=_json_x(x))
    took = time.perf_counter() - started
    assert response.status_code == 200, response.text
    steps = {s["name"]: s for s in response.json()["parameters"]["steps"]}
    assert steps["left"]["ms"] >= 1000 and steps["right"]["ms"] >= 1000
    assert took < 1.8, f"two 1 s steps took {took:.2f} s: they ran one after the other"


def test_a_failing_step_is_named(server: Server) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    x[0, 0] = MODEL_BUG
    response = server.post("/v2/models/fanout/infer", json=_json_x(x))
    assert response.status_code == 500, response.text
    assert (
        response.json()["error"].startswith("step 'left' (model slow-a)") or "step 'right'" in response.json()["error"]
    )
    response = server.post(
        "/v2/models/ticket-router/infer",
        json={
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "again"]},
                {"name": "customer_id", "datatype": "BYTES", "shape": [2], "data": ["c-0001", "nobody"]},
            ]
        },
    )
    assert response.status_code == 404, response.text
    assert response.json() == {
        "error": "step 'customer' (lookup customers): feature table 'customers' has no key 'nobody'",
        "code": "entity_not_found",
    }
    # Nothing was charged for either failure, and the server goes on serving.
    assert infer(server, "fanout", {"x": np.zeros((1, 16), dtype=np.float32)})["y"].shape == (1, 32)


def test_a_step_never_opens_a_model_the_key_does_not(server: Server) -> None:
    token = server.keys().create(new_key("narrow", models=("ticket-router", "triage")))
    response = server.post(
        "/v2/models/ticket-router/infer",
        json={
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
                {"name": "customer_id", "datatype": "BYTES", "shape": [1], "data": ["c-0001"]},
            ]
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"].startswith("step 'embed' (model minilm): this API key does not open model")


def test_pipeline_metadata_and_readiness(server: Server) -> None:
    doc = server.get("/v2/models/ticket-router").json()
    assert doc["platform"] == "slserve_pipeline"
    assert [t["name"] for t in doc["inputs"]] == ["text", "customer_id"]
    ready = server.get("/v2/models/ticket-router/ready")
    assert ready.status_code == 200, ready.text
    assert server.get("/v2/health/ready").json()["pipelines"] == {"fanout": True, "ticket-router": True}


def _json_x(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}
