"""The front door, as a bare ASGI callable: every request gets a request id and (except health and metrics) an
API key check here; inference (`POST /v2/models/{model}[/versions/{version}]/infer`, `POST /v1/embeddings`)
is served here too, everything else passes to Starlette.

Inference skips Starlette's router and middleware (a measurable share of a sub-millisecond request) and talks
ASGI directly: read the body with a size limit, decode straight into numpy, run the pipeline, send the encoded
response. Errors are rendered here by the protocol's rule: `{"error", "code"}` for v2 and slserve's own
endpoints, OpenAI's `{"error": {"message", "type", "code"}}` under /v1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from slserve import tracing
from slserve.accounts.keys import KeyRecord
from slserve.compose.spec import PipelineSpec
from slserve.errors import SlserveError, Unauthorized
from slserve.gateway import openai
from slserve.gateway.auth import Authenticator, presented_key, require_admin, scoped, tier_for
from slserve.gateway.endpoints import ADMIN_PREFIX, PUBLIC, front_endpoint
from slserve.gateway.intake import ClientGone, Intake, body_limit
from slserve.gateway.metrics import CONTENT_TYPE, Metrics
from slserve.gateway.observe import Observer
from slserve.gateway.passage import Call, Passage, Reply
from slserve.gateway.replies import error_reply, not_allowed, result_headers
from slserve.platform.timeline import Timelines
from slserve.platform.v2 import HEADER_LENGTH, RequestLimits, encode_infer, parse_infer
from slserve.router.live import Resolve, Router
from slserve.router.table import Route
from slserve.serving import Served
from slserve.settings import ServeSettings
from slserve.spec import FunctionSpec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALLOW_UPGRADE = "x-slserve-allow-upgrade"
# No key needed: health, metrics, the dashboard's page (it has no data of its own), the icon browsers ask for.
CALLER = "slserve.key"  # where Starlette handlers find the authenticated key in the ASGI scope
DECODE_IN_THREAD = 256 * 1024  # bodies larger than this are decoded off the event loop
T = TypeVar("T")
log = logging.getLogger("slserve.gateway")


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def routing_key(key: KeyRecord, headers: dict[str, str]) -> str:
    """Who the caller is for sticky canaries: a routing key the caller chose, else its API key's id."""
    return headers.get("x-slserve-routing-key") or key.key_id


class Front:
    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        passage: Passage,
        metrics: Metrics,
        settings: ServeSettings,
        timeline: Timelines,
    ) -> None:
        self.app = app
        self.observer = Observer(metrics, timeline)
        self.auth = auth
        self.passage = passage
        self.router: Router = passage.runner.router
        self.metrics = metrics
        self.max_body_bytes = settings.max_body_bytes
        self.max_elements = settings.max_tensor_elements
        self.intake = Intake(
            settings.inflight_body_bytes,
            settings.inflight_body_share,
            settings.min_upload_kb_per_s * 1024,
            settings.upload_grace_s,
        )
        # function -> (the spec its body limit was computed for, the limit)
        self._limits: dict[str, tuple[FunctionSpec | PipelineSpec, int]] = {}
        self.public_metrics = settings.public_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        found = front_endpoint(path)
        if path in PUBLIC:
            if found is not None and scope["method"] != found[0].method:
                await _respond(send, *error_reply(not_allowed(scope["method"], found[0]), path))
            elif found is not None:  # /metrics
                await self.serve_metrics(scope, send)
            else:
                await self.app(scope, receive, send)
            return
        request_id = os.urandom(16).hex()  # 128 random bits, as a uuid4's hex (without building a uuid4 object)
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = tracing.Incoming(headers) if tracing.TRACEPARENT in headers else tracing.NO_TRACE
        method = scope["method"]
        name = f"{method} {found[0].path}" if found is not None else method  # (semconv: the route, not the path)
        attributes = {"http.request.method": method, "url.path": path, "slserve.request_id": request_id}
        with tracing.server_span(name, incoming, attributes) as span:
            call: Call | None = None
            try:
                with tracing.span("auth"):
                    key = self.auth.authenticate(headers)
                if path.startswith(ADMIN_PREFIX):
                    require_admin(key, path)
                if found is None:
                    scope[CALLER] = key
                    await self.app(scope, receive, _with_request_id(send, request_id))
                    return
                endpoint, params = found
                if method != endpoint.method:
                    raise not_allowed(method, endpoint)
                protocol = "openai" if endpoint.openai else "v2"
                idempotency_key = headers.get("idempotency-key")
                call = Call(request_id, key, protocol, headers, b"", idempotency_key, trace=incoming)
                call.trace_id = tracing.trace_id(incoming)
                if endpoint.openai:  # /v1/embeddings
                    reply = await self.embeddings(call, receive, path)
                else:
                    reply = await self.v2(call, params["model"], params.get("version"), receive, path)
            except ClientGone:
                return
            except SlserveError as e:
                reply = error_reply(e, path)
            except Exception as e:  # a bug: say so without a stack trace, log it, keep serving
                log.exception("unexpected error on %s %s", method, path, extra={"fields": {"request_id": request_id}})
                reply = error_reply(SlserveError(f"internal error ({type(e).__name__}); the server logged it"), path)
            finally:
                if call is not None:
                    self.intake.release(call.held_bytes, call.key.tenant)
                    call.held_bytes = 0
                    await self.passage.done(call)
            status, body, out_headers = reply
            out_headers.setdefault("x-request-id", request_id)
            await _respond(send, status, body, out_headers)
            seconds = time.perf_counter() - started
            trace_id = call.trace_id if call is not None else tracing.trace_id(incoming)
            self.observer.answered(call, path, status, seconds, out_headers["x-request-id"], trace_id)
            self.observer.traced(span, call, status)

    async def v2(self, call: Call, model: str, version: str | None, receive: Receive, path: str) -> Reply:
        key, headers = call.key, call.headers
        tier = tier_for(key, headers.get("x-slserve-tier"))
        upgrade = _true(headers.get(ALLOW_UPGRADE))
        draw = random.random()
        sticky = routing_key(key, headers)
        with tracing.span("route"):
            route = scoped(
                key,
                self.router.route(
                    model, version, routing_key=sticky, tier=tier, allow_upgrade=upgrade, draw=draw, opens=key.models
                ),
            )
        call.route = route
        call.resolve = self.resolver(key, sticky, upgrade, draw)
        fdef = self.router.signature_function(route)
        await self.passage.admit(call)  # the key's limits before a byte of the body is held
        why = f"the largest valid request to {fdef.name}: its signature, limits.max_rows, limits.max_bytes_per_element"
        await self.read_request(call, receive, self.body_limit(fdef.name, fdef.spec), why)
        replayed = await self.passage.replay(call, path)
        if replayed is not None:
            return replayed
        fdef = self.router.signature_function(route)
        limits = RequestLimits(self.max_elements, fdef.spec.limits.max_rows, fdef.spec.limits.max_bytes_per_element)
        with tracing.span("decode"):
            v2 = await decode(len(call.body), parse_infer, fdef, call.body, headers.get(HEADER_LENGTH), limits)
        asked_tier, asked_upgrade = v2.parameters.tier, v2.parameters.allow_upgrade
        if (asked_tier and asked_tier != tier) or asked_upgrade is not None:  # v2 parameters may choose the tier too
            tier = asked_tier or tier
            upgrade = upgrade or asked_upgrade is True
            route = scoped(
                key,
                self.router.route(
                    model, version, routing_key=sticky, tier=tier, allow_upgrade=upgrade, draw=draw, opens=key.models
                ),
            )

        def encode(served: Served) -> tuple[bytes, dict[str, str]]:
            content, out = encode_infer(served.result, model, v2, [s.to_dict() for s in served.steps])
            out.update(result_headers(served))
            return content, out

        return await self.passage.serve(call, route, v2.request, path, encode)

    async def embeddings(self, call: Call, receive: Receive, path: str) -> Reply:
        key, headers = call.key, call.headers
        await self.passage.admit(call)
        await self.read_request(call, receive, self.embeddings_limit(), "the largest valid request to any function")
        with tracing.span("decode"):
            request = await decode(len(call.body), openai.parse_embeddings, call.body)
        tier = tier_for(key, headers.get("x-slserve-tier") or request.body.tier)
        upgrade = _true(headers.get(ALLOW_UPGRADE))
        sticky = routing_key(key, headers)
        draw = random.random()
        with tracing.span("route"):
            route = scoped(
                key,
                self.router.route(
                    request.model,
                    request.selector,
                    routing_key=sticky,
                    tier=tier,
                    allow_upgrade=upgrade,
                    draw=draw,
                    opens=key.models,
                ),
            )
        call.route = route
        call.resolve = self.resolver(key, sticky, upgrade, draw)
        replayed = await self.passage.replay(call, path)
        if replayed is not None:
            return replayed
        fdef = self.router.signature_function(route)
        infer = openai.infer_request(fdef, request, call.request_id, self.max_elements)
        output = fdef.spec.signature.outputs[0].name
        model_name = request.model if request.selector is None else f"{request.model}@{route.version}"

        def encode(served: Served) -> tuple[bytes, dict[str, str]]:
            result = served.result
            body = openai.encode_embeddings(
                result.outputs[output], model_name, request.body.encoding_format, result.tokens
            )
            return body, {"content-type": "application/json", **result_headers(served)}

        return await self.passage.serve(call, route, infer, path, encode)

    def body_limit(self, name: str, spec: FunctionSpec | PipelineSpec) -> int:
        """The largest body a valid request to this function can need (computed once per spec)."""
        kept = self._limits.get(name)
        if kept is None or kept[0] is not spec:
            kept = self._limits[name] = (spec, body_limit(spec, self.max_elements, self.max_body_bytes))
        return kept[1]

    def embeddings_limit(self) -> int:
        """/v1/embeddings names its model in the body: the largest limit of the functions it may reach."""
        functions = self.router.functions.values()
        return max((self.body_limit(f.name, f.spec) for f in functions), default=self.max_body_bytes)

    def resolver(self, key: KeyRecord, sticky: str, upgrade: bool, draw: float) -> Resolve:
        """How a pipeline's model steps are routed for this caller: sticky as its own requests, within the
        models and tiers its key opens (a step never opens a model the key does not)."""

        def resolve(model: str, selector: str | None, tier: str | None) -> Route:
            return scoped(
                key,
                self.router.route(
                    model, selector, routing_key=sticky, tier=tier, allow_upgrade=upgrade, draw=draw, opens=key.models
                ),
            )

        return resolve

    async def serve_metrics(self, scope: Scope, send: Send) -> None:
        """Operational metrics for anyone (unless `public_metrics` is off); money only for an admin key."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            key = self.auth.authenticate(headers) if presented_key(headers) or not self.public_metrics else None
            if key is not None:
                require_admin(key, "/metrics with a key")
        except SlserveError as e:
            await _respond(send, *error_reply(e, "/metrics"))
            return
        await _respond(send, 200, await self.metrics.render(money=key is not None), {"content-type": CONTENT_TYPE})

    async def read_request(self, call: Call, receive: Receive, limit: int, why: str) -> None:
        """The body (within `limit`, the gateway's byte budget and its minimum rate); from then on, a disconnect
        cancels the call (work not yet started for it is dropped)."""
        with tracing.span("read body"):
            call.body, call.held_bytes = await self.intake.read(call.headers, receive, limit, why, call.key.tenant)
        watcher = asyncio.ensure_future(receive())  # resolves at the disconnect, or once the response is sent

        def on_message(done: asyncio.Future[Message]) -> None:
            if not done.cancelled() and done.exception() is None and done.result()["type"] == "http.disconnect":
                call.client_gone()

        watcher.add_done_callback(on_message)
        call.watcher = watcher


def caller(scope: Scope) -> KeyRecord:
    key = scope.get(CALLER)
    if not isinstance(key, KeyRecord):
        raise Unauthorized("this endpoint needs an API key")
    return key


def _with_request_id(send: Send, request_id: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
        await send(message)

    return wrapped


# Large bodies are decoded here, two at a time: each decode's transient memory is bounded by the intake budget,
# and few threads keep few malloc arenas (each thread's own arena would hold its peak).
_DECODERS = ThreadPoolExecutor(2, thread_name_prefix="slserve-decode")


async def decode(size: int, parse: Callable[..., T], *args: Any) -> T:
    """`parse(*args)` of a body of `size` bytes: here for a small one; in a decoding thread for a large one, so
    that the loop goes on with other requests while it runs (numpy's conversions release the GIL; orjson's parse
    holds it, which the per-function body limits keep short)."""
    if size <= DECODE_IN_THREAD:
        return parse(*args)
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, functools.partial(parse, *args))


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
