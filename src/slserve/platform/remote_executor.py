"""What the executors of remote targets share: a function's calls leave this gateway as v2 requests (binary
tensors, exact) and come back as v2 answers with slserve's headers (compute time, cold start, version).

A subclass says only how a call travels (`_call`: Lambda's Invoke API, HTTPS to a Modal endpoint) and maps its
transport's failures to the gateway's errors, so a tier's fallback policy applies to every target alike:
`Overloaded` (429) and `RuntimeUnavailable` (503) and `InstanceFailed` (502) fall back; an answer the function
itself gave (a 400 for bad input) does not.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from slserve.errors import (
    ClientClosedRequest,
    GatewayTimeout,
    InstanceFailed,
    ModelNotFound,
    Overloaded,
    RuntimeUnavailable,
    SlserveError,
    error_from_wire,
)
from slserve.platform.base import Deployed, FunctionStatus, InferRequest, InferResult
from slserve.platform.v2 import HEADER_LENGTH, decode_outputs, encode_request


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]  # lower-case names


@dataclass
class _Counters:
    served: int = 0
    failed: int = 0
    cold_starts: int = 0
    in_flight: int = 0


class RemoteExecutor(ABC):
    target: ClassVar[str]

    def __init__(self) -> None:
        self.functions: dict[str, Deployed] = {}
        self.counters: dict[str, _Counters] = {}

    @abstractmethod
    async def _call(self, function: Deployed, body: bytes, headers: dict[str, str], request: InferRequest) -> Reply:
        """Send one v2 request to the function; its transport's failures raised as the gateway's errors."""

    async def start(self, functions: list[Deployed]) -> None:
        for function in functions:
            self.deploy(function)

    async def stop(self, drain_seconds: float) -> None:
        return None

    def deploy(self, function: Deployed) -> None:
        self.functions[function.name] = function
        self.counters.setdefault(function.name, _Counters())

    def remove(self, name: str) -> None:
        self.functions.pop(name, None)

    def ready(self) -> bool:
        return True

    async def catch_up(self) -> None:  # noqa: B027 (every remote target's: its status is this process's own)
        pass

    def warm_capacity(self, function: str) -> int:
        return 0  # unknown from here: the remote platform keeps its own warm containers

    def gives_gpu(self, function: str) -> bool | None:
        return None

    def host(self) -> dict[str, Any] | None:
        return None

    async def infer(self, request: InferRequest) -> InferResult:
        function = self.functions.get(request.function)
        if function is None:
            raise ModelNotFound(f"no function named {request.function!r} on the {self.target} target")
        if request.cancellation is not None and request.cancellation.cancelled:
            raise ClientClosedRequest("the client went away before the call")
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise GatewayTimeout(f"{request.function}: the request's deadline passed before the call")
        body, headers = encode_request(request)
        counters = self.counters[function.name]
        counters.in_flight += 1
        started = time.perf_counter()
        try:
            reply = await self._call(function, body, headers, request)
            if reply.status != 200:
                raise _answered_error(reply)
        except SlserveError:
            counters.failed += 1
            raise
        finally:
            counters.in_flight -= 1
        total_ms = (time.perf_counter() - started) * 1000
        counters.served += 1
        out = reply.headers
        cold = out.get("x-slserve-cold-start-ms")
        counters.cold_starts += cold is not None
        compute_ms = float(out.get("x-slserve-compute-ms", 0.0))
        return InferResult(
            outputs=decode_outputs(reply.body, out.get(HEADER_LENGTH)),
            function=function.name,
            version=out.get("x-slserve-version", function.spec.model.version),
            instance=out.get("x-slserve-instance") or out.get("x-request-id") or self.target,
            queue_ms=max(0.0, total_ms - compute_ms),  # the call's own time: network, the platform's queue, init
            compute_ms=compute_ms,
            batch_size=int(out.get("x-slserve-batch-size", 1)),
            cold_start_ms=None if cold is None else float(cold),
            tokens=int(out["x-slserve-tokens"]) if "x-slserve-tokens" in out else None,
            notes=orjson.loads(out["x-slserve-notes"]) if "x-slserve-notes" in out else {},
            device=out.get("x-slserve-device"),
        )

    def status(self, function: str) -> FunctionStatus:
        deployed = self.functions[function]
        counters = self.counters[function]
        return FunctionStatus.of(
            deployed,
            target=self.target,
            in_flight=counters.in_flight,
            served=counters.served,
            failed=counters.failed,
            cold_starts=counters.cold_starts,
            error=deployed.error,
            ready=deployed.digest is not None,
        )


def _answered_error(reply: Reply) -> SlserveError:
    """The function's own error answer (slserve's JSON error body), rebuilt as the error it was; anything else
    (a proxy's page in front of the function) as the failure of the target it is, so that fallback applies."""
    try:
        error = orjson.loads(reply.body)
        if isinstance(error, dict) and "code" in error:
            return error_from_wire(reply.status, error["code"], error.get("error", "the function failed"))
    except orjson.JSONDecodeError:
        pass
    text = " ".join(reply.body[:200].decode(errors="replace").split())
    message = f"the function's platform answered {reply.status} ({text or 'no body'})"
    if reply.status == 429:
        return Overloaded(f"{message}; retry later", retry_after=_retry_after(reply.headers))
    if reply.status in (502, 503, 504):
        return RuntimeUnavailable(message)
    return InstanceFailed(message)


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", 1)))
    except ValueError:
        return 1.0
