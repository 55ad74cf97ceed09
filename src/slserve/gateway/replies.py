"""What the gateway sends back besides a body: an answer's x-slserve-* headers (where it ran, how long it
waited and ran, what it cost, a pipeline's steps), and an error in its protocol's shape (`{"error", "code"}`
for v2 and slserve's own endpoints, OpenAI's under /v1) with the headers its status asks for."""

from __future__ import annotations

import orjson

from slserve.compose.run import StepReport
from slserve.errors import MethodNotAllowed, SlserveError, Unauthorized
from slserve.gateway import openai
from slserve.gateway.endpoints import OPENAI_PREFIX, Endpoint
from slserve.gateway.passage import Reply
from slserve.platform.base import InferResult
from slserve.serving import Served


def result_headers(served: Served) -> dict[str, str]:
    result: InferResult = served.result
    headers = {
        "x-slserve-function": result.function,
        "x-slserve-version": result.version,
        "x-slserve-instance": result.instance,
        "x-slserve-queue-ms": f"{result.queue_ms:.2f}",
        "x-slserve-compute-ms": f"{result.compute_ms:.2f}",
        "x-slserve-batch-size": str(result.batch_size),
        "x-slserve-tier": served.tier,
        "x-slserve-cost": str(served.price),
    }
    if result.cold_start_ms is not None:
        headers["x-slserve-cold-start-ms"] = f"{result.cold_start_ms:.1f}"
    if served.route.alias is not None:
        headers["x-slserve-alias"] = served.route.alias
    if served.fallback is not None:
        headers["x-slserve-fallback"] = served.fallback
    if served.degraded is not None:
        headers["x-slserve-degraded"] = served.degraded
    if served.steps:  # a pipeline: each step's function, time and price
        headers["x-slserve-steps"] = ", ".join(step_header(s) for s in served.steps)
    truncated = result.notes.get("truncated")
    if truncated:
        headers["x-slserve-truncated"] = str(truncated)  # rows cut to the model's input limit, as asked
    return headers


def step_header(step: StepReport) -> str:
    """`embed;function=minilm-onnx;ms=4.21;cost=37` (model steps), `joined;op;ms=0.02` (the others)."""
    if step.served is None:
        return f"{step.name};{step.kind};ms={step.ms:.2f}"
    return f"{step.name};function={step.served.result.function};ms={step.ms:.2f};cost={step.served.price}"


def not_allowed(method: str, endpoint: Endpoint) -> MethodNotAllowed:
    return MethodNotAllowed(f"{method} is not allowed here; {endpoint.method} it", endpoint.method)


def error_reply(error: SlserveError, path: str) -> Reply:
    body = openai.error_document(error) if path.startswith(OPENAI_PREFIX) else orjson.dumps(error.to_dict())
    headers = {"content-type": "application/json"}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    if isinstance(error, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="slserve"'
    if isinstance(error, MethodNotAllowed):
        headers["allow"] = error.allow
    return error.status, body, headers
