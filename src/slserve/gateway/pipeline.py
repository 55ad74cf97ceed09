"""One inference request after authentication, the same for every protocol: idempotent replay, the key's
limits, the router (under the request timeout), the ledger, the response.

    replay?  ──► limits (429) ──► router.infer (504 past request_timeout_s) ──► ledger (durable) ──► response

A request that reaches the router writes exactly one ledger record, whatever happens next: charged when it
succeeded, price 0 with its status when it did not.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slserve.accounts.keys import KeyRecord
from slserve.accounts.limits import Limiter
from slserve.errors import GatewayTimeout, IdempotencyMismatch, InvalidInput, PayloadTooLarge, SlserveError
from slserve.gateway.deadlines import Deadlines
from slserve.metering.ledger import Ledger, Record, StoredResponse
from slserve.platform.base import InferRequest, Platform
from slserve.router.dispatch import Router, Served
from slserve.router.table import Route

REPLAY = "x-slserve-idempotent-replay"
Reply = tuple[int, bytes, dict[str, str]]
Encode = Callable[[Served], tuple[bytes, dict[str, str]]]


@dataclass
class Call:
    """An authenticated request on its way through."""

    request_id: str
    key: KeyRecord
    endpoint: str  # "v2" | "openai"
    body: bytes
    idempotency_key: str | None = None
    started_wall: float = field(default_factory=time.time)
    # What happened, for logs and metrics (filled in as it is known).
    route: Route | None = None
    served: Served | None = None
    stored: StoredResponse | None = None  # the answer kept for Idempotency-Key replays

    def fingerprint(self, path: str) -> str:
        return hashlib.sha256(f"{self.endpoint}\0{path}\0".encode() + self.body).hexdigest()


class Pipeline:
    def __init__(
        self,
        platform: Platform,
        router: Router,
        limiter: Limiter,
        ledger: Ledger | None,
        timeout_s: float,
        max_elements: int,
    ) -> None:
        self.platform = platform
        self.router = router
        self.limiter = limiter
        self.ledger = ledger
        self.timeout_s = timeout_s
        self.deadlines = Deadlines(timeout_s)
        self.max_elements = max_elements
        self._in_progress: dict[tuple[str, str], asyncio.Future[StoredResponse | None]] = {}

    async def replay(self, call: Call, path: str) -> Reply | None:
        """The stored answer to an earlier request with this Idempotency-Key, if there is one (waiting for it
        when that request is still running). Replays are free and reach no function."""
        if call.idempotency_key is None or self.ledger is None:
            return None
        if not 0 < len(call.idempotency_key) <= 255:
            raise InvalidInput("Idempotency-Key must be 1 to 255 characters")
        slot = (call.key.key_id, call.idempotency_key)
        running = self._in_progress.get(slot)
        stored = await asyncio.shield(running) if running else self.ledger.stored_response(*slot)
        if stored is None:
            self._in_progress[slot] = asyncio.get_running_loop().create_future()
            return None
        if stored.fingerprint != call.fingerprint(path):
            raise IdempotencyMismatch(
                f"Idempotency-Key {call.idempotency_key!r} was used for a different request "
                f"({stored.request_id}); use a new key for a new request"
            )
        return stored.status, stored.body, {**stored.headers, REPLAY: "true"}

    def done(self, call: Call) -> None:
        """The call is over (whatever happened): concurrent retries waiting on it get its stored answer, or
        run themselves when it has none."""
        if call.idempotency_key is not None:
            waiting = self._in_progress.pop((call.key.key_id, call.idempotency_key), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(call.stored)

    async def serve(self, call: Call, route: Route, request: InferRequest, path: str, encode: Encode) -> Reply:
        elements = sum(a.size for a in request.inputs.values())
        if elements > self.max_elements:
            raise PayloadTooLarge(
                f"the request carries {elements} tensor elements, over the server's limit of "
                f"{self.max_elements} (max_tensor_elements); split it into smaller requests"
            )
        admission = self.limiter.admit(call.key)
        charged = False
        try:
            reply = await self._run(call, route, request, path, encode)
            charged = True
            return reply
        finally:
            admission.release(charged)

    async def _run(self, call: Call, route: Route, request: InferRequest, path: str, encode: Encode) -> Reply:
        call.route = route
        try:
            served = await self.deadlines.run(self.router.infer(self.platform, route, request))
        except TimeoutError:
            error: SlserveError = GatewayTimeout(
                f"{route.model} did not answer within {self.timeout_s:g} s (request_timeout_s); retry later"
            )
            await self._record(call, route, None, error.status, 0)
            raise error from None
        except SlserveError as e:
            await self._record(call, route, None, e.status, 0)
            raise
        call.served = served
        body, headers = encode(served)
        headers["x-request-id"] = call.request_id
        stored = None
        if call.idempotency_key is not None:
            stored = StoredResponse(call.request_id, call.fingerprint(path), 200, headers, body)
        await self._record(call, route, served, 200, len(body), stored)
        call.stored = stored
        return 200, body, headers

    async def _record(
        self,
        call: Call,
        route: Route,
        served: Served | None,
        status: int,
        output_bytes: int,
        stored: StoredResponse | None = None,
    ) -> None:
        if self.ledger is None:
            return
        result = served.result if served else None
        record = Record(
            request_id=call.request_id,
            time_us=int(call.started_wall * 1e6),
            key_id=call.key.key_id,
            tenant=call.key.tenant,
            endpoint=call.endpoint,
            model=route.model,
            version=route.version,
            alias=route.alias,
            tier=served.tier if served else route.tier,
            function=result.function if result else (route.candidates[0][1] if route.candidates else ""),
            instance=result.instance if result else None,
            cold_start=result is not None and result.cold_start_ms is not None,
            cold_start_ms=result.cold_start_ms if result else None,
            queue_ms=result.queue_ms if result else None,
            compute_ms=result.compute_ms if result else None,
            input_bytes=len(call.body),
            output_bytes=output_bytes,
            batch_size=result.batch_size if result else None,
            tokens=result.tokens if result else None,
            status=status,
            price=served.cost if served else 0,
            fallback=served.fallback if served else None,
        )
        kept = (call.key.key_id, call.idempotency_key, stored) if stored and call.idempotency_key else None
        await self.ledger.append(record, kept)
