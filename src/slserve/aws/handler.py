"""The Lambda handler of a model function: `slserve.aws.handler.handler`.

The model is loaded when this module is imported, in Lambda's init phase (before the snapshot, with SnapStart),
so no invocation pays for it. Two kinds of event carry a v2 request:

- an API Gateway HTTP API (payload format 2.0) event, answered as an HTTP response;
- a direct invoke from slserve's router: `{"slserve": 1, "body": <base64 v2 request>, "headers": {...}}`,
  answered in the same shape as an HTTP response (`statusCode`, `headers`, base64 `body`).

Powertools gives the logs (Lambda's request id, the router's, `gateway_request_id`, and the W3C trace id of the
request's `traceparent`, `trace_id`, in every line), metrics in
EMF (cold starts, latency, batch size) and traces (X-Ray, where enabled).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model
from aws_lambda_powertools.utilities.typing import LambdaContext

from slserve.platform.aws import PAYLOAD_LIMIT
from slserve.platform.v2 import REQUEST_ID
from slserve.remote.model import ModelFunction, decode_body
from slserve.tracing import Incoming

logger = Logger(service="slserve")
metrics = Metrics(namespace="slserve", service="slserve")
tracer = Tracer(service="slserve")

MODEL = ModelFunction.from_environment(PAYLOAD_LIMIT)  # the init phase: artifact mapped, model warmed up
logger.info("model loaded", extra={"function": MODEL.function.name, "init_ms": round(MODEL.init_ms, 1)})

try:  # SnapStart's runtime hooks exist only in Lambda's managed Python runtimes
    from snapshot_restore_py import register_after_restore

    register_after_restore(MODEL.after_restore)
except ImportError:
    pass


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # answers are customers' data (up to 6 MB)
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    started = time.perf_counter()
    if event.get("slserve") == 1:  # from slserve's router
        body, headers = base64.b64decode(event.get("body", "")), dict(event.get("headers") or {})
    else:
        http = parse(event=event, model=APIGatewayProxyEventV2Model)
        body, headers = decode_body(event), {k.lower(): v for k, v in http.headers.items()}
    gateway_id = headers.get(REQUEST_ID)  # the router's id of the request: in this invocation's log lines too
    trace = Incoming(headers)  # the W3C trace the request is part of (the gateway's span, or its client's)
    logger.append_keys(gateway_request_id=gateway_id, trace_id=trace.trace_id)  # (None: no key in the line)
    status, content, out = MODEL.answer(body, headers, context.get_remaining_time_in_millis())
    metrics.add_dimension(name="function", value=MODEL.function.name)
    metrics.add_metric(name="latency", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000)
    if status == 200:  # the rows the model call ran (padded to the shape's proven floor)
        metrics.add_metric(name="batch_size", unit=MetricUnit.Count, value=int(out.get("x-slserve-batch-size", 1)))
    else:
        metrics.add_metric(name="refused", unit=MetricUnit.Count, value=1)
        logger.info("refused", extra={"status": status})  # with the router's id: its record names the same one
    out[REQUEST_ID] = gateway_id or context.aws_request_id
    out["x-slserve-lambda-request-id"] = context.aws_request_id
    return {
        "statusCode": status,
        "headers": out,
        "body": base64.b64encode(content).decode(),
        "isBase64Encoded": True,
    }
