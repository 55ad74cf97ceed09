"""Traces end to end: a gateway with `OTEL_TRACES_EXPORTER=otlp` exports a pipeline request's spans, from the
client's `traceparent` to each step's call on an instance, to a real OTLP/HTTP receiver (the spans decoded from
protobuf); the ledger record and the access log line carry the same trace id."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator

import numpy as np
import pytest
from tests.conftest import write_function
from tests.integration.otlp_receiver import ReceivedSpan, Receiver
from tests.integration.server import Server, start_server
from tests.integration.test_pipelines import FANOUT, binary_request
from tests.integration.test_platform import wait_for

from slserve.build.function import build_function
from slserve.compose.catalog import build_pipeline
from slserve.compose.spec import load_pipeline
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions, load_function
from slserve_samples.faulty import hazards_function

pytestmark = pytest.mark.slow
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER_KIND, INTERNAL_KIND = 2, 1  # opentelemetry.proto.trace.v1.Span.SpanKind


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.stop()


@pytest.fixture(scope="module")
def server(
    receiver: Receiver, sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    functions = tmp_path_factory.mktemp("traced-functions")
    for name in ("slow-a", "slow-b"):
        toml = hazards_function(max_delay_ms=0).replace('name = "hazards"', f'name = "{name}"')
        write_function(functions, name, toml)
    (functions / "fanout").mkdir()
    (functions / "fanout" / "pipeline.toml").write_text(FANOUT)
    for fdef in discover_functions(functions):
        build_function(load_function(fdef.directory), sample_store)
    build_pipeline(load_pipeline(functions / "fanout"), discover_functions(functions), sample_store)
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: the batch goes out soon after the request
        "OTEL_SERVICE_NAME": "slserve-traced",
    }
    srv = start_server(functions, sample_store.root, functions.parent / "serve-traced.log", environ=environ)
    yield srv
    srv.stop()


def fanout(server: Server, **headers: str) -> str:
    body, head = binary_request({"x": np.ones((2, 16), dtype=np.float32)})
    response = server.post("/v2/models/fanout/infer", content=body, headers={**head, **headers})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def exported(receiver: Receiver, trace_id: str) -> list[ReceivedSpan]:
    """The trace's spans, once its server span (the last to end) has arrived."""
    assert wait_for(lambda: any(s.kind == SERVER_KIND for s in receiver.trace(trace_id)), 30), receiver.spans
    return receiver.trace(trace_id)


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.parent_id == parent.span_id}


def recorded_trace(server: Server, request_id: str) -> str | None:
    db = sqlite3.connect(server.state / "ledger.sqlite")
    try:
        row = db.execute("SELECT trace_id FROM records WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else row[0]


def logged_trace(server: Server, request_id: str) -> str | None:
    for line in server.log.read_text().splitlines():
        if line.startswith("{") and request_id in line:
            doc = json.loads(line)
            if doc.get("request_id") == request_id and "trace_id" in doc:
                return str(doc["trace_id"])
    return None


def test_a_pipeline_requests_trace_goes_from_the_clients_traceparent_to_every_steps_instance(
    server: Server, receiver: Receiver
) -> None:
    trace_id = os.urandom(16).hex()
    request_id = fanout(server, traceparent=f"00-{trace_id}-{CLIENT_SPAN}-01")
    spans = exported(receiver, trace_id)

    (root,) = [s for s in spans if s.kind == SERVER_KIND]
    assert root.parent_id == CLIENT_SPAN and root.name == "POST /v2/models/{model}/infer"
    assert root.service == "slserve-traced"
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["slserve.request_id"] == request_id
    assert root.attributes["slserve.model"] == "fanout" and root.attributes["slserve.price"] > 0
    top = children(spans, root)
    assert {"auth", "read body", "route", "decode", "pipeline fanout", "ledger write"} <= set(top)
    steps = children(spans, top["pipeline fanout"])
    assert set(steps) == {"step left", "step right", "step both"}
    for step, function in (("step left", "slow-a"), ("step right", "slow-b")):
        (call,) = children(spans, steps[step]).values()
        assert call.name == f"call {function}" and call.status != 2
        parts = children(spans, call)
        assert set(parts) == {"queue", "run"}
        assert parts["run"].attributes["slserve.batch_size"] >= 1 and parts["run"].attributes["slserve.instance"]
        assert call.start_ns <= parts["queue"].start_ns <= parts["queue"].end_ns <= parts["run"].start_ns
        assert parts["run"].end_ns <= call.end_ns <= steps[step].end_ns <= root.end_ns
    assert steps["step both"].start_ns >= max(steps["step left"].end_ns, steps["step right"].end_ns)
    assert all(s.kind in (SERVER_KIND, INTERNAL_KIND) and s.end_ns >= s.start_ns for s in spans)

    assert recorded_trace(server, request_id) == trace_id
    assert wait_for(lambda: logged_trace(server, request_id) == trace_id, 10), server.log.read_text()[-2000:]


def test_without_a_traceparent_the_gateway_starts_the_trace_and_records_its_id(
    server: Server, receiver: Receiver
) -> None:
    for sent in ({}, {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}):  # none; invalid
        request_id = fanout(server, **sent)
        trace_id = recorded_trace(server, request_id)
        assert trace_id is not None and len(trace_id) == 32 and trace_id != "0" * 32
        spans = exported(receiver, trace_id)
        (root,) = [s for s in spans if s.kind == SERVER_KIND]
        assert root.parent_id == "" and root.attributes["slserve.request_id"] == request_id


def test_a_failed_request_is_an_error_span_with_its_status(server: Server, receiver: Receiver) -> None:
    trace_id = os.urandom(16).hex()
    response = server.post(
        "/v2/models/fanout/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
        headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"},
    )
    assert response.status_code == 400
    (root,) = [s for s in exported(receiver, trace_id) if s.kind == SERVER_KIND]
    assert root.attributes["http.response.status_code"] == 400 and root.status != 2  # a client's error, not ours
    assert recorded_trace(server, response.headers["x-request-id"]) in (None, trace_id)
