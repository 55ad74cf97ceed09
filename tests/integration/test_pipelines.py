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
from tests.conformance import conforms
from tests.conftest import FUNCTIONS, ROOT, write_function
from tests.integration.server import Server, start_server

from slserve.accounts.keys import new_key
from slserve.build.function import build_function
from slserve.compose.catalog import build_pipeline
from slserve.compose.spec import load_pipeline
from slserve.metering.ledger import SQLiteLedger
from slserve.platform.v2 import HEADER_LENGTH, decode_outputs
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


FANOUT_V2 = FANOUT.replace('name = "fanout"', 'name = "fanout"\nversion = "2"').replace(
    '["left.y", "right.y"]', '["right.y", "left.y"]'
)
EMBED = """
[model]
name = "embed-norm"

[[signature.inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]

[[signature.outputs]]
name = "embedding"
datatype = "FP32"
shape = [-1, 384]

[[steps]]
name = "embed"
model = "minilm"
inputs = { text = "text" }

[[steps]]
name = "unit"
op = "normalize"
inputs = ["embed.embedding"]

[outputs]
embedding = "unit.output"
"""
ROUTES = """
[models.fanout]
default = "stable"

[models.fanout.aliases.stable]
version = "1"

[models.fanout.aliases.canary]
split = { "1" = 50, "2" = 50 }
"""
PIPELINES = {"fanout": FANOUT, "fanout-v2": FANOUT_V2, "embed-norm": EMBED}


@pytest.fixture(scope="module")
def server(sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    functions = tmp_path_factory.mktemp("functions")
    for name in ("minilm-onnx", "triage", "ticket-router"):
        shutil.copytree(FUNCTIONS / name, functions / name)
    for name in ("slow-a", "slow-b"):
        toml = hazards_function(max_delay_ms=0).replace('name = "hazards"', f'name = "{name}"')
        write_function(functions, name, toml)
    for name, text in PIPELINES.items():
        (functions / name).mkdir()
        (functions / name / "pipeline.toml").write_text(text)
    for fdef in discover_functions(functions):
        build_function(load_function(fdef.directory), sample_store)
    for name in ("ticket-router", *PIPELINES):
        build_pipeline(load_pipeline(functions / name), discover_functions(functions), sample_store)
    routes = functions.parent / "routes.toml"
    routes.write_text(ROUTES)
    srv = start_server(functions, sample_store.root, functions.parent / "serve-pipelines.log", routes=str(routes))
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
    from slserve.platform.base import InferRequest
    from slserve.platform.v2 import encode_request

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
    assert conforms(response).status_code == 200, response.text
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
    pipelines = server.get("/v2/health/ready").json()["pipelines"]
    assert pipelines == {"embed-norm": True, "fanout": True, "fanout-v2": True, "ticket-router": True}


def test_pipeline_versions_take_aliases_and_canaries(server: Server) -> None:
    x = {"x": np.arange(16, dtype=np.float32).reshape(1, 16)}
    v1 = infer(server, "fanout", x)["y"]  # the default alias: stable -> 1
    v2 = server.post("/v2/models/fanout/versions/2/infer", json=_json_x(x["x"]))
    assert v2.headers["x-slserve-version"] == "2"
    y2 = np.array(v2.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 32)
    assert np.array_equal(y2[:, :16], v1[:, 16:]) and np.array_equal(y2[:, 16:], v1[:, :16])  # v2 swaps the halves
    seen = set()
    for caller in range(40):
        r = server.post(
            "/v2/models/fanout/versions/canary/infer",
            json=_json_x(x["x"]),
            headers={"x-slserve-routing-key": f"c{caller}"},
        )
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-slserve-version"])
    assert seen == {"1", "2"}


def test_a_text_to_embedding_pipeline_serves_openai_embeddings(server: Server) -> None:
    assert "embed-norm" in {m["id"] for m in server.get("/v1/models").json()["data"]}
    r = conforms(server.post("/v1/embeddings", json={"model": "embed-norm", "input": ["a pipeline", "of two steps"]}))
    assert r.status_code == 200, r.text
    vectors = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert r.headers["x-slserve-steps"].startswith("embed;function=minilm-onnx")


def test_a_pipeline_says_what_its_steps_truncated_and_its_functions_traffic_counts(server: Server) -> None:
    before = server.get("/slserve/overview").json()["recent"].get("minilm-onnx", {}).get("requests", 0)
    long_text = "word " * 600  # over MiniLM's 256 tokens
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [long_text, "short"]}]}
    r = server.post("/v2/models/embed-norm/infer", json={**body, "parameters": {"truncate": True}})
    assert r.status_code == 200, r.text
    assert r.headers["x-slserve-truncated"] == "1"
    plain = server.post(
        "/v2/models/embed-norm/infer", json={**body, "inputs": [{**body["inputs"][0], "shape": [1], "data": ["short"]}]}
    )
    assert plain.status_code == 200 and "x-slserve-truncated" not in plain.headers
    # the dashboard's traffic for the function the pipeline's step ran on (it was 0 for pipeline-only traffic)
    assert server.get("/slserve/overview").json()["recent"]["minilm-onnx"]["requests"] >= before + 2


def _json_x(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}


def test_a_pipeline_never_lifts_a_step_s_row_limit(server: Server) -> None:
    rows = 65  # the pipeline takes 256 rows; minilm-onnx, its first step, 64 (limits.max_rows)
    response = server.post(
        "/v2/models/ticket-router/infer",
        json={
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [rows], "data": ["hi"] * rows},
                {"name": "customer_id", "datatype": "BYTES", "shape": [rows], "data": ["c-0001"] * rows},
            ]
        },
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == (
        "step 'embed' (model minilm): 65 rows, over minilm-onnx's limit of 64 per request (limits.max_rows); "
        "split the request"
    )
