"""Trace context in and out (W3C `traceparent`), and what the OTEL_* variables turn on. The spans a server
exports are tested end to end against an OTLP receiver (tests/integration/test_traces.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from slserve import tracing
from slserve.platform.base import InferRequest
from slserve.platform.v2 import encode_request

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def traces_on() -> Iterator[None]:
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "none"}) == "none"
    yield
    tracing.shutdown()


def call_headers(trace: dict[str, str]) -> dict[str, str]:
    return encode_request(InferRequest("f", {"x": np.zeros((1, 2), np.float32)}, trace=trace))[1]


@pytest.mark.parametrize(
    "sent",
    [
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # the all-zero trace id is invalid
        f"00-{TRACE}-{'0' * 16}-01",  # ... and the all-zero span id
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is forbidden
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper-case hex is not W3C's
        "00-xyz",
    ],
)
def test_an_invalid_traceparent_is_ignored(sent: str) -> None:
    incoming = tracing.Incoming({"traceparent": sent, "tracestate": "a=b"})
    assert incoming.trace_id is None and incoming.headers == {}


def test_off_the_clients_context_is_kept_and_passed_on_unchanged() -> None:
    incoming = tracing.Incoming({"traceparent": PARENT, "tracestate": "vendor=1", "other": "x"})
    assert incoming.trace_id == TRACE and tracing.trace_id(incoming) == TRACE
    assert incoming.headers == {"traceparent": PARENT, "tracestate": "vendor=1"}
    headers = call_headers(incoming.headers)
    assert headers["traceparent"] == PARENT and headers["tracestate"] == "vendor=1"
    assert "traceparent" not in call_headers({})
    with tracing.span("nothing") as span:  # no span is made
        assert span is None


def test_on_a_call_carries_the_span_it_is_made_in(traces_on: None) -> None:
    incoming = tracing.Incoming({"traceparent": PARENT})
    with tracing.server_span("POST /infer", incoming, {}) as server, tracing.span("call f") as call:
        assert server is not None and call is not None
        assert tracing.trace_id(incoming) == TRACE  # the client's trace, continued
        sent = call_headers(incoming.headers)["traceparent"]
        version, trace_id, span_id, flags = sent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "01")
        assert span_id == format(call.get_span_context().span_id, "016x") != "00f067aa0ba902b7"
    with tracing.server_span("POST /infer", tracing.NO_TRACE, {}):  # no client context: a trace of its own
        started = tracing.trace_id(tracing.NO_TRACE)
        assert started is not None and started != TRACE and len(started) == 32


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf only"),
    ],
)
def test_settings_it_cannot_honour_are_refused_at_start(environ: dict[str, str], said: str) -> None:
    with pytest.raises(tracing.TracingUnavailable, match=said):
        tracing.configure(environ)
    assert not tracing.enabled()


def test_off_unless_an_exporter_is_named_and_the_sdk_is_not_disabled() -> None:
    assert tracing.configure({}) is None
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) is None
    assert not tracing.enabled()


def test_a_trace_not_sampled_makes_no_child_spans_and_says_so_downstream() -> None:
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "always_off"}) == "none"
    try:
        incoming = tracing.Incoming({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"})
        with tracing.server_span("POST /infer", incoming, {}) as server, tracing.span("call f") as call:
            assert server is not None and not server.is_recording() and call is None
            assert tracing.trace_id(incoming) == TRACE
            assert call_headers(incoming.headers)["traceparent"].endswith("-00")  # not sampled, passed on
    finally:
        tracing.shutdown()
