"""An inference request's passage after authentication, the same for every protocol: the key's limits (before its body
is read), idempotent replay, the router (under the request timeout), the ledger, the response.

    limits (429) ──► body ──► replay? ──► router.infer (504 past request_timeout_s) ──► ledger (durable) ──► response

An Idempotency-Key is held in two steps: in this process, requests with the same key wait in line without
touching the store (`KeyHolders`); the one at the head claims the key in the store the fleet shares
(`FleetState`), so a twin arriving at another process (another router environment on Lambda) waits for the
same answer instead of running again. The quota is counted in that store too.

A request that reaches the router writes exactly one ledger record, whatever happens next: charged when it
succeeded, price 0 with its status when it did not. A request whose client went away is recorded with status
499: its work is dropped if it had not started, and when it had, it is charged only if `bill_abandoned` says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slserve import tracing
from slserve.accounts.keys import KeyRecord
from slserve.accounts.limits import Held, Limits, QuotaHold, take_quota
from slserve.errors import (
    ClientClosedRequest,
    GatewayTimeout,
    IdempotencyInProgress,
    IdempotencyMismatch,
    IdempotentAnswerNotKept,
    SlserveError,
)
from slserve.gateway.deadlines import Deadlines
from slserve.gateway.idempotency import KeyHolders, Slot, check_key, fingerprint
from slserve.metering.fleet import LEASE_MARGIN_S, FleetState
from slserve.metering.records import Ledger, Record, StoredResponse, steps_json
from slserve.platform.base import Cancellation, InferRequest, Platform
from slserve.platform.v2 import client_timeout_s
from slserve.router.live import Resolve
from slserve.router.table import Route
from slserve.serving import Runner, Served

REPLAY = "x-slserve-idempotent-replay"
ABANDONED = 499  # the ledger status of a request whose client went away (nginx's "client closed request")
Reply = tuple[int, bytes, dict[str, str]]
# How often a request whose Idempotency-Key another process holds asks the store again (doubling up to the cap).
POLL_FIRST_S, POLL_MAX_S = 0.02, 0.5
Encode = Callable[[Served], tuple[bytes, dict[str, str]]]


@dataclass
class Call:
    """An authenticated request on its way through."""

    request_id: str
    key: KeyRecord
    endpoint: str  # "v2" | "openai"
    headers: dict[str, str]
    body: bytes = b""
    idempotency_key: str | None = None
    held_bytes: int = 0  # of the gateway's budget for request bodies
    started_wall: float = field(default_factory=time.time)
    cancellation: Cancellation = field(default_factory=Cancellation)
    admission: Held | None = None  # the key's rate and concurrency, taken before the body is read
    quota: QuotaHold | None = None  # ... and its monthly quota
    slot: Slot | None = None  # the Idempotency-Key slot this call holds (in this process)
    claimed: bool = False  # ... and in the store the fleet shares
    resolve: Resolve | None = None  # routes a pipeline's steps for this caller (within its key)
    watcher: asyncio.Future[Any] | None = None  # the ASGI receive that tells of a disconnect
    finished: bool = False
    charged: bool = False  # it counts against the key's quota (answered, or billed after its client left)
    # What happened, for logs and metrics (filled in as it is known).
    route: Route | None = None
    served: Served | None = None
    trace: tracing.Incoming = tracing.NO_TRACE  # the client's trace context, passed on to the functions called
    trace_id: str | None = None  # the request's trace (the client's, or the gateway's span's when traces are on)

    @property
    def gone(self) -> bool:
        return self.cancellation.cancelled

    def client_gone(self) -> None:
        """The client disconnected: work not yet started for it is dropped."""
        if not self.finished:
            self.cancellation.cancel()

    def fingerprint(self, path: str) -> str:
        return fingerprint(self.endpoint, path, self.headers, self.body)


class Passage:
    """A request's passage through the gateway, whatever its protocol (not a model pipeline: `compose`)."""

    def __init__(
        self,
        platform: Platform,
        runner: Runner,
        limiter: Limits,
        ledger: Ledger | None,
        fleet: FleetState | None,
        timeout_s: float,
        bill_abandoned: bool = False,
    ) -> None:
        self.platform = platform
        self.runner = runner
        self.limiter = limiter
        self.ledger = ledger
        self.fleet = fleet
        self.timeout_s = timeout_s
        self.bill_abandoned = bill_abandoned
        self.deadlines = Deadlines(timeout_s)
        self.holders = KeyHolders()

    async def replay(self, call: Call, path: str) -> Reply | None:
        """The stored answer to an earlier request with this Idempotency-Key, if there is one. The call holds the
        key from here until `done`: a second request with it, in this process or another, waits, then replays
        the first one's answer or, when it left none (it failed), runs itself. Replays are free and reach no
        function."""
        if call.idempotency_key is None or self.ledger is None or self.fleet is None:
            return None
        slot = (call.key.key_id, check_key(call.idempotency_key))
        give_up = time.monotonic() + self.timeout_s
        await self.holders.acquire(slot, self.timeout_s)
        call.slot = slot
        pause = POLL_FIRST_S
        while True:
            outcome = await self.fleet.claim(*slot, call.request_id, self.timeout_s + LEASE_MARGIN_S)
            if outcome.claimed:
                call.claimed = True
                return None
            if outcome.stored is not None:
                return self._replayed(call, path, outcome.stored)
            if time.monotonic() + pause > give_up or call.gone:
                raise IdempotencyInProgress(
                    f"a request with Idempotency-Key {slot[1]!r} is still running after {self.timeout_s:g} s; "
                    "retry later to get its answer"
                )
            await asyncio.sleep(pause)  # held by a request in another process: ask again
            pause = min(POLL_MAX_S, pause * 2)

    def _replayed(self, call: Call, path: str, stored: StoredResponse) -> Reply:
        if stored.fingerprint != call.fingerprint(path):
            raise IdempotencyMismatch(
                f"Idempotency-Key {call.idempotency_key!r} was used for a different request "
                f"({stored.request_id}); use a new key for a new request"
            )
        if stored.omitted_bytes:
            raise IdempotentAnswerNotKept(
                f"a request with Idempotency-Key {call.idempotency_key!r} ({stored.request_id}) was answered and "
                f"charged once, but its answer ({stored.omitted_bytes} bytes) was too large to keep for replay; "
                "send a new Idempotency-Key to run it again"
            )
        return stored.status, stored.body, {**stored.headers, REPLAY: "true"}

    async def admit(self, call: Call) -> None:
        """The key's limits, from the headers alone, before its body is read: a key at its concurrency, rate or
        quota is refused without holding a buffer. Released by `done`."""
        call.admission = await self.limiter.take(call.key)
        if self.fleet is not None and call.key.quota_per_month is not None:  # the store only for keys with one
            call.quota = await take_quota(self.fleet, call.key)

    async def done(self, call: Call) -> None:
        """The call is over, whatever happened: its limits are given back (its quota unit too, unless it was
        charged) and the next request waiting for its Idempotency-Key goes on."""
        call.finished = True
        if call.admission is not None:
            call.admission.release()
            call.admission = None
        if call.quota is not None:
            quota, call.quota = call.quota, None
            await quota.settle(call.charged)
        if call.claimed and call.slot is not None and self.fleet is not None:
            call.claimed = False
            await self.fleet.release(*call.slot, call.request_id)
        if call.slot is not None:
            self.holders.release(call.slot)
            call.slot = None

    async def serve(self, call: Call, route: Route, request: InferRequest, path: str, encode: Encode) -> Reply:
        """Run an admitted call (`admit`)."""
        call.route = route
        request.cancellation = call.cancellation
        request.request_id = call.request_id
        request.trace = call.trace.headers
        request.deadline = time.monotonic() + min(self.timeout_s, client_timeout_s(call.headers))
        try:
            if call.gone:  # left while waiting for its key or its body: nothing was started
                raise ClientClosedRequest("the client went away before the request ran")
            served = await self.deadlines.run(self.runner.infer(self.platform, route, request, call.resolve))
        except TimeoutError:
            error: SlserveError = GatewayTimeout(
                f"{route.model} did not answer within {self.timeout_s:g} s (request_timeout_s); retry later"
            )
            await self._record(call, route, None, error.status)
            raise error from None
        except SlserveError as e:
            await self._record(call, route, None, e.status)
            raise
        call.served = served
        if call.gone:  # it ran for a client that left meanwhile: recorded, charged by the policy
            await self._record(call, route, served, ABANDONED, price=served.price if self.bill_abandoned else 0)
            raise ClientClosedRequest("the client went away while the request ran")
        body, headers = encode(served)
        headers["x-request-id"] = call.request_id
        stored = None
        if call.slot is not None:
            stored = StoredResponse(call.request_id, call.fingerprint(path), 200, headers, body)
        await self._record(call, route, served, 200, len(body), served.price, stored)
        if call.gone and self.ledger is not None:  # left while its record was made durable: the answer goes nowhere
            price = served.price if self.bill_abandoned else 0
            await self.ledger.correct(call.request_id, ABANDONED, price)
            call.charged = price > 0
            raise ClientClosedRequest("the client went away before its answer was sent")
        return 200, body, headers

    async def _record(
        self,
        call: Call,
        route: Route,
        served: Served | None,
        status: int,
        output_bytes: int = 0,
        price: int = 0,
        stored: StoredResponse | None = None,
    ) -> None:
        counts = status == 200 or price > 0  # against the key's monthly quota
        if self.ledger is None:
            call.charged = counts
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
            price=price,
            fallback=served.fallback if served else None,
            compute_cost=served.compute_cost if served else None,
            steps=steps_json(served.steps) if served and served.steps else None,
            trace_id=call.trace_id,
        )
        kept = (call.key.key_id, call.slot[1], stored) if stored and call.slot else None
        with tracing.span("ledger write"):
            await self.ledger.append(record, kept)
        call.charged = counts
