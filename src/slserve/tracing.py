"""Traces: OpenTelemetry spans for a request's way through the gateway, and W3C trace context in and out.

Off by default. `OTEL_TRACES_EXPORTER` turns them on: `otlp` (OTLP over HTTP/protobuf, to
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), `console`, or `none` (spans made, and their
trace ids in the ledger and the logs, nothing exported). Everything else is the SDK's own `OTEL_*` variables: the
sampler (`OTEL_TRACES_SAMPLER`; a client's sampled `traceparent` is followed by the default, parent-based one),
the batch processor's sizes and delay (`OTEL_BSP_*`), the service name and resource attributes.

Off, no span is made: a client's `traceparent` is still read, its trace id kept in the ledger and the logs, and it
is passed on unchanged (with its `tracestate`) to the functions the request reaches on Lambda or Modal.

The spans of a request: the server span (its parent the client's), `auth`, `read body`, `route`, `decode`, then
per function called `call FUNCTION` with `queue` (waiting for an instance, its cold start included) and `run`
(on the instance, with its batch size); a pipeline's steps are `step NAME` spans holding their calls; last,
`ledger write`. A local instance's span is recorded by the gateway from the instance's own timings (the platform
is one process tree: one exporter, not one per forked instance); a remote call carries `traceparent` on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from slserve.errors import SlserveError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
EXPORTERS = ("otlp", "console", "none")
Attributes = Mapping[str, str | int | float | bool]
log = logging.getLogger("slserve.tracing")
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


class _State:
    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None


_state = _State()


class TracingUnavailable(SlserveError):
    """The OTEL_* settings ask for traces this install cannot make (said at start, before serving)."""

    code = "tracing_unavailable"


def configure(environ: Mapping[str, str] = os.environ) -> str | None:
    """Traces as the environment says (see the module); returns what was turned on, for the startup log, or None
    when traces are off. `environ` chooses the exporters; the SDK reads its own variables (sampler, batch
    processor, endpoint, resource) from the process's environment."""
    shutdown()
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingUnavailable(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)}: slserve exports traces with one of {', '.join(EXPORTERS)}"
        )
    try:  # (in a `try` for ImportError: the packages a deploy writes leave the SDK out, see remote.requirements)
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        raise _not_installed(e) from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "slserve"}))
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter = _exporter(name, environ, ConsoleSpanExporter)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    _state.provider, _state.tracer = provider, provider.get_tracer("slserve")
    return ",".join(names)


def _exporter(name: str, environ: Mapping[str, str], console: type[SpanExporter]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return console()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "http/protobuf"):
        raise TracingUnavailable(f"OTLP protocol {protocol!r}: slserve exports OTLP over http/protobuf only")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise _not_installed(e) from None
    return OTLPSpanExporter()


def _not_installed(error: ImportError) -> TracingUnavailable:
    return TracingUnavailable(
        f"OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK or its OTLP exporter is not installed "
        f"({error.name}); install slserve[traces], or unset OTEL_TRACES_EXPORTER"
    )


def shutdown() -> None:
    """Export what is still buffered, then stop (a server's last step)."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _state.tracer is not None


class Incoming:
    """A request's W3C trace context as its client sent it (validated): its trace id, and the headers that pass
    it on when no span of ours is made."""

    __slots__ = ("headers", "trace_id")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.trace_id: str | None = None
        self.headers: dict[str, str] = {}
        if TRACEPARENT in headers:
            context = trace.get_current_span(_PROPAGATOR.extract(headers)).get_span_context()
            if context.is_valid:
                self.trace_id = format_trace_id(context.trace_id)
                self.headers = {k: headers[k] for k in (TRACEPARENT, TRACESTATE) if k in headers}


NO_TRACE = Incoming({})


@contextlib.contextmanager
def _server_span(tracer: trace.Tracer, name: str, incoming: Incoming, attributes: Attributes) -> Iterator[Span]:
    parent = _PROPAGATOR.extract(incoming.headers) if incoming.headers else None
    with tracer.start_as_current_span(
        name, parent, SpanKind.SERVER, attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span


MaybeSpan = contextlib.AbstractContextManager[Span | None]


def server_span(name: str, incoming: Incoming, attributes: Attributes) -> MaybeSpan:
    """The span of a request served here, a child of the client's span when it sent one (None when off)."""
    tracer = _state.tracer
    if tracer is None:
        return _NO_SPAN
    return _server_span(tracer, name, incoming, attributes)


def span(name: str, attributes: Attributes | None = None) -> MaybeSpan:
    """A child of the current span for the block (None when off, or when the trace is not sampled: a span that
    is not recorded costs the SDK nearly as much as one that is): an exception leaving it marks it failed."""
    tracer = _state.tracer
    if tracer is None or not trace.get_current_span().is_recording():  # a trace not sampled: no children
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes, record_exception=False)


def record(name: str, start: float, end: float, attributes: Attributes | None = None) -> None:
    """A finished child of the current span, from `time.monotonic()` stamps taken where it happened."""
    tracer = _state.tracer
    parent = trace.get_current_span()
    if tracer is None or not parent.is_recording():
        return
    wall_ns = time.time_ns() - time.monotonic_ns()
    # Within its parent's time, whatever the clocks' jitter: a child never seems to start before its parent.
    floor = getattr(parent, "start_time", None) or 0
    start_ns = max(floor, wall_ns + int(start * 1e9))
    started = tracer.start_span(name, attributes=attributes, start_time=start_ns)
    started.end(end_time=max(start_ns, wall_ns + int(end * 1e9)))


def answered(span: Span | None, status: int, attributes: Attributes) -> None:
    """A server span's outcome: its HTTP status (a 5xx marks it failed) and what the request turned out to be."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def trace_id(incoming: Incoming) -> str | None:
    """The current trace's id (the client's trace when it sent one); off, the client's alone."""
    if _state.tracer is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return format_trace_id(context.trace_id)
    return incoming.trace_id


def outgoing(incoming: Mapping[str, str]) -> dict[str, str]:
    """The trace context to send with a call made for this request: the current span's when on, else the
    client's own, unchanged."""
    if _state.tracer is None:
        return dict(incoming)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)  # (nothing outside a span: then the client's context goes on as it came)
    return carrier or dict(incoming)


def attributes_of(values: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """Span attributes, leaving out the unknown (None) ones."""
    return {k: v for k, v in values.items() if v is not None}
