"""The `aws` executor: functions whose target is `aws` run as Lambda functions, each call a synchronous
`invoke` of the function's alias, with the request as v2 binary data (exact, no JSON numbers) in the payload
that `slserve.aws.handler` takes.

Lambda's refusals become the gateway's usual errors, so a tier's fallback policy applies to them as to local
instances: throttling is a 429 `Overloaded` (with Retry-After), a missing function or a failed init is a 503
`RuntimeUnavailable`, a crashed or timed-out invocation a 502 `InstanceFailed`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from slserve.errors import (
    ClientClosedRequest,
    GatewayTimeout,
    InstanceFailed,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RuntimeUnavailable,
    SlserveError,
    error_from_wire,
)
from slserve.gateway.v2 import HEADER_LENGTH, decode_outputs, encode_request
from slserve.platform.base import Deployed, FunctionStatus, InferRequest, InferResult

ALIAS = "live"  # the alias every deployed function is invoked through (it moves on each deploy)
PAYLOAD_LIMIT = 6 * 1024 * 1024  # Lambda's synchronous invocations, request and response alike


def lambda_name(prefix: str, function: str) -> str:
    return f"{prefix}-{function}"


@dataclass
class _Counters:
    served: int = 0
    failed: int = 0
    cold_starts: int = 0
    in_flight: int = 0


def lambda_client(region: str | None, endpoint_url: str | None, concurrency: int, timeout_s: float) -> Any:
    """A boto3 Lambda client for synchronous invokes: no retries (a throttle is the gateway's 429 and a tier's
    fallback; a timed-out invoke retried would run the model twice), a read timeout past the request's own, and a
    connection per concurrent call."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},
        read_timeout=timeout_s + 5,
        connect_timeout=5,
        max_pool_connections=concurrency,
    )
    return boto3.client("lambda", region_name=region, endpoint_url=endpoint_url, config=config)


class LambdaExecutor:
    def __init__(
        self,
        client: Any,
        prefix: str = "slserve",
        naming: Callable[[str, str], str] = lambda_name,
        concurrency: int = 64,
    ) -> None:
        """`client`: a boto3 Lambda client (its own endpoint, region and credentials); `concurrency`: invokes in
        flight at once from this gateway (each holds a thread while Lambda computes; asyncio's default pool would
        cap them at the core count + 4)."""
        self.client = client
        self.prefix = prefix
        self.naming = naming
        self.calls = ThreadPoolExecutor(concurrency, thread_name_prefix="lambda-invoke")
        self.functions: dict[str, Deployed] = {}
        self.counters: dict[str, _Counters] = {}

    async def start(self, functions: list[Deployed]) -> None:
        for function in functions:
            self.deploy(function)

    async def stop(self, drain_seconds: float) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)

    def deploy(self, function: Deployed) -> None:
        self.functions[function.name] = function
        self.counters.setdefault(function.name, _Counters())

    def remove(self, name: str) -> None:
        self.functions.pop(name, None)

    def ready(self) -> bool:
        return True

    def warm_capacity(self, function: str) -> int:
        return 0  # unknown from here: Lambda keeps its own warm environments

    async def infer(self, request: InferRequest) -> InferResult:
        function = self.functions.get(request.function)
        if function is None:
            raise ModelNotFound(f"no function named {request.function!r} on the aws target")
        if request.cancellation is not None and request.cancellation.cancelled:
            raise ClientClosedRequest("the client went away before the call")
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise GatewayTimeout(f"{request.function}: the request's deadline passed before the call")
        body, headers = encode_request(request)
        payload = orjson.dumps({"slserve": 1, "body": base64.b64encode(body).decode(), "headers": headers})
        if len(payload) > PAYLOAD_LIMIT:  # refused here, not by Lambda as a 503 after the upload
            raise PayloadTooLarge(
                f"the call to {function.name} would be {len(payload)} bytes (base64 makes binary tensors 4/3 "
                f"larger), over Lambda's {PAYLOAD_LIMIT}-byte limit for synchronous calls; send fewer rows"
            )
        counters = self.counters[function.name]
        counters.in_flight += 1
        started = time.perf_counter()
        try:
            name = self.naming(self.prefix, function.name)
            reply = await asyncio.get_running_loop().run_in_executor(self.calls, self._invoke, name, payload)
        except SlserveError:
            counters.failed += 1
            raise
        finally:
            counters.in_flight -= 1
        total_ms = (time.perf_counter() - started) * 1000
        status, out_headers = int(reply["statusCode"]), reply.get("headers") or {}
        content = base64.b64decode(reply.get("body") or "")
        if status != 200:
            counters.failed += 1
            error = orjson.loads(content)
            raise error_from_wire(status, error.get("code", "internal"), error.get("error", "the function failed"))
        counters.served += 1
        cold = out_headers.get("x-slserve-cold-start-ms")
        counters.cold_starts += cold is not None
        compute_ms = float(out_headers.get("x-slserve-compute-ms", 0.0))
        return InferResult(
            outputs=decode_outputs(content, out_headers.get(HEADER_LENGTH)),
            function=function.name,
            version=out_headers.get("x-slserve-version", function.spec.model.version),
            instance=out_headers.get("x-request-id", "lambda"),
            queue_ms=max(0.0, total_ms - compute_ms),  # the invoke's own time: network, Lambda's queue, init
            compute_ms=compute_ms,
            batch_size=1,
            cold_start_ms=None if cold is None else float(cold),
        )

    def _invoke(self, name: str, payload: bytes) -> dict[str, Any]:
        errors = self.client.exceptions
        try:
            response = self.client.invoke(FunctionName=name, Qualifier=ALIAS, Payload=payload)
        except errors.TooManyRequestsException:
            raise Overloaded(f"{name}: Lambda is throttling this function; retry later", retry_after=1.0) from None
        except errors.RequestTooLargeException:
            raise PayloadTooLarge(f"{name}: over Lambda's {PAYLOAD_LIMIT}-byte limit; send fewer rows") from None
        except errors.ResourceNotFoundException:
            raise RuntimeUnavailable(
                f"{name}:{ALIAS} does not exist on Lambda; deploy it (`slserve deploy aws`)"
            ) from None
        except errors.ClientError as e:
            raise RuntimeUnavailable(f"{name}: Lambda refused the call ({e})") from None
        body = response["Payload"].read()
        if response.get("FunctionError"):
            detail = orjson.loads(body) if body else {}
            message = detail.get("errorMessage", "no message") if isinstance(detail, dict) else str(detail)
            raise InstanceFailed(f"{name}: the invocation failed ({response['FunctionError']}: {message})")
        reply: dict[str, Any] = orjson.loads(body)
        return reply

    def status(self, function: str) -> FunctionStatus:
        deployed = self.functions[function]
        spec, counters = deployed.spec, self.counters[function]
        return FunctionStatus(
            name=deployed.name,
            model=spec.model.name,
            version=spec.model.version,
            framework=spec.framework.value,
            tier=spec.tier,
            target="aws",
            artifact=deployed.digest,
            in_flight=counters.in_flight,
            served=counters.served,
            failed=counters.failed,
            cold_starts=counters.cold_starts,
            error=deployed.error,
            ready=deployed.digest is not None,
        )
