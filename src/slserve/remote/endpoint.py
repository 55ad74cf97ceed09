"""A model function's own HTTP endpoint (what a Modal class serves as its ASGI app): the v2 protocol for one
function, concurrent requests batched exactly (`Rounds`), behind a shared secret.

Only slserve's gateways call it: every request carries `Authorization: Bearer <secret>` (the secret both sides
read from their environment), compared in constant time; with no secret configured the endpoint refuses
everything rather than serve the open internet. The answer carries what the gateway's answer and ledger need:
compute time, batch size, cold start (the container's first answer after a start or a restore), tokens.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from slserve.errors import ModelNotFound, RuntimeUnavailable, SlserveError, Unauthorized
from slserve.platform.v2 import REQUEST_ID, client_timeout_s
from slserve.remote.model import ModelFunction, error_reply
from slserve.remote.rounds import Rounds


def endpoint_app(model: ModelFunction, secret: str | None) -> Starlette:
    rounds = Rounds(model)
    expected = f"Bearer {secret}".encode() if secret else None
    names = {model.function.name, model.function.spec.model.name}

    def refused(error: SlserveError) -> Response:
        status, body, headers = error_reply(error)
        return Response(body, status, headers)

    def authorized(request: Request) -> SlserveError | None:
        if expected is None:
            return RuntimeUnavailable("this endpoint has no secret (SLSERVE_ENDPOINT_SECRET): it serves nobody")
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Unauthorized("this endpoint answers slserve's gateways only: send its secret as a Bearer token")
        return None

    async def infer(request: Request) -> Response:
        response = await answer(request)
        gateway_id = request.headers.get(REQUEST_ID)
        if gateway_id is not None:  # the gateway's id of the request, answered with it
            response.headers[REQUEST_ID] = gateway_id
        return response

    async def answer(request: Request) -> Response:
        problem = authorized(request)
        if problem is not None:
            return refused(problem)
        if request.path_params["model"] not in names:
            return refused(ModelNotFound(f"this endpoint serves {model.function.spec.model.name!r} only"))
        try:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            left_s = client_timeout_s(headers)  # the gateway's time left for it: no work starts past that
            remaining_ms = None if math.isinf(left_s) else int(left_s * 1000)
            v2 = model.parse(body, headers, remaining_ms)
            deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000
            answered = await rounds.infer(v2, deadline)
            outcome = answered.outcome
            if outcome.error is not None:
                raise outcome.error
            assert outcome.outputs is not None
            status, content, out = model.reply(
                v2, outcome.outputs, outcome.compute_ms, outcome.batch_size, answered.tokens, dict(answered.notes)
            )
        except SlserveError as e:
            return refused(e)
        return Response(content, status, out)

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', 200, {"content-type": "application/json"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await rounds.close()

    return Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
