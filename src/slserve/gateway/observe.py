"""What the gateway learns from each answered request: its metrics, the dashboard's timeline (a pipeline's
functions count too), the access log line, and what its server span says it turned out to be."""

from __future__ import annotations

import logging

from opentelemetry.trace import Span

from slserve import tracing
from slserve.gateway import logs
from slserve.gateway.metrics import Metrics
from slserve.gateway.passage import Call
from slserve.platform.timeline import Timelines


class Observer:
    def __init__(self, metrics: Metrics, timeline: Timelines) -> None:
        self.metrics = metrics
        self.timeline = timeline

    def answered(
        self, call: Call | None, path: str, status: int, seconds: float, request_id: str, trace_id: str | None
    ) -> None:
        """Metrics and the access log line for an inference request."""
        if call is None:
            ms = round(seconds * 1000, 2)
            logs.access("request", request_id=request_id, path=path, status=status, ms=ms, trace_id=trace_id)
            return
        route, served = call.route, call.served
        model, version = (route.model, route.version) if route else ("", "")
        tier = served.tier if served else (route.tier if route else "")
        alias = (route.alias or "") if route else ""
        m = self.metrics
        m.answered(call.endpoint, model, version, alias, tier, status, seconds)
        function = served.result.function if served else route.candidates[0][1] if route and route.candidates else None
        if function is not None:
            self.timeline.answered(function, status, seconds, served.result.cold_start_ms if served else None)
        for step in served.steps if served else ():  # a pipeline's functions served too: their traffic counts
            if step.served is not None:
                done = step.served.result
                self.timeline.answered(done.function, 200, step.ms / 1000, done.cold_start_ms)
        if served is not None:
            result = served.result
            m.batch(result.function, result.batch_size)
            if result.cold_start_ms is not None:
                m.cold_start.labels(result.function).observe(result.cold_start_ms / 1000)
            if served.price:
                m.charged.labels(model, tier).inc(served.price)
            if served.fallback:
                m.fallbacks.labels(model, tier).inc()
        if not logs.ACCESS.isEnabledFor(logging.INFO):
            return
        logs.access(
            "infer",
            request_id=request_id,
            key_id=call.key.key_id,
            tenant=call.key.tenant,
            endpoint=call.endpoint,
            model=model,
            version=version,
            alias=alias or None,
            tier=tier,
            function=served.result.function if served else None,
            status=status,
            cost=served.price if served else 0,
            ms=round(seconds * 1000, 2),
            trace_id=trace_id,
        )

    @staticmethod
    def traced(span: Span | None, call: Call | None, status: int) -> None:
        """The server span's outcome: its status, and the request's model, function, tier and tenant."""
        if span is None:
            return
        route, served = (call.route, call.served) if call is not None else (None, None)
        tracing.answered(
            span,
            status,
            tracing.attributes_of(
                {
                    "slserve.tenant": call.key.tenant if call is not None else None,
                    "slserve.model": route.model if route else None,
                    "slserve.version": (served.result.version if served else route.version) if route else None,
                    "slserve.tier": served.tier if served else (route.tier if route else None),
                    "slserve.function": served.result.function if served else None,
                    "slserve.price": served.price if served else None,
                }
            ),
        )
