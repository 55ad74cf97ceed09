"""The inference hot path as a bare ASGI callable: POST /v2/models/{model}[/versions/{version}]/infer.

Every other route goes through Starlette; this one skips its router and middleware stack (a measurable share of
a sub-millisecond request) and talks ASGI directly: read the body with a size limit, decode straight into numpy,
call the platform, send the encoded response. Errors are rendered here, by the same rule as everywhere else.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from slserve.errors import PayloadTooLarge, SlserveError
from slserve.gateway.v2 import HEADER_LENGTH, encode_infer, parse_infer
from slserve.platform.base import InferResult, Platform
from slserve.router.dispatch import Router

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALLOW_UPGRADE = "x-slserve-allow-upgrade"
INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
log = logging.getLogger("slserve.gateway")


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nothing to answer."""


def routing_key(headers: dict[str, str], client: str) -> str:
    """Who the caller is, for sticky canaries: a routing key they chose, else their credentials, else their
    address. Credentials are hashed before use: the key never leaves this function."""
    chosen = headers.get("x-slserve-routing-key")
    if chosen:
        return chosen
    secret = headers.get("authorization") or headers.get("x-api-key")
    if secret:
        return hashlib.sha256(secret.encode()).hexdigest()
    return client


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def result_headers(result: InferResult) -> dict[str, str]:
    headers = {
        "x-slserve-function": result.function,
        "x-slserve-version": result.version,
        "x-slserve-instance": result.instance,
        "x-slserve-queue-ms": f"{result.queue_ms:.2f}",
        "x-slserve-compute-ms": f"{result.compute_ms:.2f}",
        "x-slserve-batch-size": str(result.batch_size),
    }
    if result.cold_start_ms is not None:
        headers["x-slserve-cold-start-ms"] = f"{result.cold_start_ms:.1f}"
    return headers


def error_body(error: SlserveError) -> tuple[bytes, dict[str, str]]:
    headers = {"content-type": "application/json"}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return orjson.dumps(error.to_dict()), headers


class InferPath:
    """Wraps the Starlette app: inference requests are served here, everything else passes through."""

    def __init__(self, app: ASGIApp, platform: Platform, router: Router, max_body_bytes: int) -> None:
        self.app = app
        self.platform = platform
        self.router = router
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            body = orjson.dumps({"error": f"{scope['method']} is not allowed here; POST an inference request"})
            await _respond(send, 405, body, {"content-type": "application/json", "allow": "POST"})
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            client = scope["client"][0] if scope.get("client") else "unknown"
            status, body, out_headers = (
                200,
                *await self.infer(match["model"], match["version"], headers, receive, client),
            )
        except ClientGone:
            return
        except SlserveError as e:
            status, (body, out_headers) = e.status, error_body(e)
        except Exception as e:  # a bug: say so without a stack trace, log it, keep serving
            log.exception("unexpected error on POST %s", scope["path"], exc_info=e)
            status, body = 500, orjson.dumps({"error": f"internal error ({type(e).__name__}); the server logged it"})
            out_headers = {"content-type": "application/json"}
        await _respond(send, status, body, out_headers)

    async def infer(
        self, model: str, version: str | None, headers: dict[str, str], receive: Receive, client: str
    ) -> tuple[bytes, dict[str, str]]:
        key, tier = routing_key(headers, client), headers.get("x-slserve-tier")
        upgrade = _true(headers.get(ALLOW_UPGRADE))
        draw = random.random()
        route = self.router.route(model, version, key, tier, upgrade, draw)
        body = await self.read_body(headers, receive)
        v2 = parse_infer(self.router.signature_function(route), body, headers.get(HEADER_LENGTH))
        asked_tier, asked_upgrade = v2.parameters.get("tier"), v2.parameters.get("allow_upgrade")
        if (asked_tier and asked_tier != tier) or asked_upgrade is not None:  # v2 parameters may choose the tier too
            tier = str(asked_tier) if asked_tier else tier
            route = self.router.route(model, version, key, tier, upgrade or asked_upgrade is True, draw)
        served = await self.router.infer(self.platform, route, v2.request)
        content, out_headers = encode_infer(served.result, model, v2)
        out_headers.update(result_headers(served.result))
        out_headers["x-slserve-tier"] = served.tier
        out_headers["x-slserve-cost"] = str(served.cost)
        if route.alias is not None:
            out_headers["x-slserve-alias"] = route.alias
        if served.fallback is not None:
            out_headers["x-slserve-fallback"] = served.fallback
        return content, out_headers

    async def read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit (max_body_mb)")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the {limit}-byte limit (max_body_mb)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
