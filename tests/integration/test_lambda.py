"""Model functions on Lambda, for real: the handler under the official runtime client (awslambdaric) against a
Runtime API peer, fed real API Gateway HTTP API (2.0) events and the router's direct invokes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.integration.lambda_peer import Environment, start_environment
from tests.integration.test_platform import wait_for

from slserve.runtime import load_runtime
from slserve.snapshot import ArtifactStore

EVENTS = Path(__file__).resolve().parents[1] / "events"
HANDLER = "slserve.aws.handler.handler"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"  # W3C's example trace


def http_event(body: bytes, binary: bool = False) -> dict[str, Any]:
    event = json.loads((EVENTS / "apigw_http_v2_infer.json").read_text())
    event["body"] = base64.b64encode(body).decode() if binary else body.decode()
    event["isBase64Encoded"] = binary
    return event


def direct(body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"slserve": 1, "body": base64.b64encode(json.dumps(body).encode()).decode(), "headers": headers or {}}


def decoded(outcome: Any) -> tuple[int, dict[str, str], Any]:
    assert outcome.ok, outcome.body
    reply = outcome.body
    return reply["statusCode"], reply["headers"], json.loads(base64.b64decode(reply["body"]))


FEATURES = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": [0.1, 0.2, 0.3, 0.4] * 2}]}


@pytest.fixture(scope="module")
def classifier(
    build_sample, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:  # type: ignore[no-untyped-def]
    build_sample("classifier")
    log = tmp_path_factory.mktemp("lambda") / "classifier.log"
    env = start_environment(
        HANDLER, {"SLSERVE_ARTIFACTS": str(sample_store.root), "SLSERVE_FUNCTION": "classifier"}, log
    )
    yield env
    env.stop()


def test_init_once_then_many_invokes_answer_v2_as_the_local_runtime_does(classifier: Environment, build_sample) -> None:  # type: ignore[no-untyped-def]
    reference = load_runtime(build_sample("classifier")).infer(
        {"features": np.array([[0.1, 0.2, 0.3, 0.4]] * 2, np.float32)}
    )
    statuses = []
    for i in range(5):
        status, headers, doc = decoded(classifier.api.invoke(direct(FEATURES)))
        statuses.append(status)
        assert doc["model_name"] == "classifier" and headers["x-slserve-function"] == "classifier"
        probabilities = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(2, 3)
        assert np.array_equal(probabilities, reference["probabilities"])
        assert ("x-slserve-cold-start-ms" in headers) == (i == 0)  # the init phase is reported once
        assert headers["x-request-id"]
    assert statuses == [200] * 5
    assert classifier.proc.poll() is None  # one process served them all


def test_the_routers_request_id_is_answered_and_logged(classifier: Environment) -> None:
    """The router sends its id of the request; the function answers with it (Lambda's own beside it), and the
    lines it logs for the request carry it, so the function's logs and the ledger's record name the same id."""
    _, headers, _ = decoded(classifier.api.invoke(direct(FEATURES, {"x-request-id": "gw-0001"})))
    assert headers["x-request-id"] == "gw-0001" and headers["x-slserve-lambda-request-id"] not in ("", "gw-0001")
    bad = {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    traced = {"x-request-id": "gw-0002", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    status, headers, _ = decoded(classifier.api.invoke(direct(bad, traced)))
    assert status == 400 and headers["x-request-id"] == "gw-0002"

    def logged() -> bool:
        lines = [json.loads(line) for line in classifier.log.read_text().splitlines() if line.startswith("{")]
        return any(
            line.get("gateway_request_id") == "gw-0002" and line.get("status") == 400 and line["trace_id"] == TRACE_ID
            for line in lines
        )

    assert wait_for(logged, 10), classifier.log.read_text()[-2000:]
    _, headers, _ = decoded(classifier.api.invoke(direct(FEATURES)))  # the id is the invocation's, not kept
    assert headers["x-request-id"] == headers["x-slserve-lambda-request-id"]


def test_api_gateway_http_events_json_and_base64(classifier: Environment) -> None:
    body = json.dumps(FEATURES).encode()
    for binary in (False, True):
        status, headers, doc = decoded(classifier.api.invoke(http_event(body, binary)))
        assert status == 200 and len(doc["outputs"]) == 2 and headers["content-type"] == "application/json"


def test_bad_requests_are_clear_4xx_and_the_environment_serves_on(classifier: Environment) -> None:
    cases = [
        (http_event(b"{not json"), 400, "malformed"),
        (
            direct({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}),
            400,
            "unknown input",
        ),
        (
            direct({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ["x"] * (7 << 20)}]}),
            413,
            "6291456-byte limit",
        ),
    ]
    for event, status, message in cases:
        got, _, doc = decoded(classifier.api.invoke(event))
        assert got == status and message in doc["error"], doc
    assert decoded(classifier.api.invoke(direct(FEATURES)))[0] == 200


def test_an_init_failure_is_reported_to_the_runtime_api(tmp_path: Path, sample_store: ArtifactStore) -> None:
    env = start_environment(
        HANDLER,
        {"SLSERVE_ARTIFACTS": str(sample_store.root), "SLSERVE_FUNCTION": "no-such-function"},
        tmp_path / "init.log",
    )
    try:
        with pytest.raises(RuntimeError, match="no-such-function"):
            env.api.invoke(direct(FEATURES), timeout_s=60)
    finally:
        env.stop()
