"""How a request's body comes in, so that one tenant's uploads cannot slow another's requests:

- **A limit per function**: the largest body a valid request to it can need (its signature, `limits.max_rows`,
  `limits.max_bytes_per_element`, with a margin), never above the server's `max_body_mb`. A body declared over it
  (`Content-Length`) is refused before a byte is read; one sent without a length is counted as it streams.
- **A budget for the gateway**: the bytes all requests in flight hold (`inflight_body_mb`), each body counted
  twice (its bytes, and what decoding them makes). A body that would take the gateway past it is refused with
  503 and Retry-After before it is read (or as it streams), so a crowd of big uploads costs bounded memory.
  One tenant holds at most its share of it (`inflight_body_share`): the rest stays for the others, and a crowd
  of one tenant's uploads costs the loop at most that share's reading and decoding at a time.
- **A minimum rate**: after a grace, a body over 64 KiB must keep arriving at `min_upload_kb_per_s`; a slower
  one is cut with 408, so slow uploads cannot hold their share of the budget for long.

The key's own limits (rate, concurrency, quota) are checked before any of this, from the headers alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from slserve.compose.spec import PipelineSpec
from slserve.errors import PayloadTooLarge, UploadsFull, UploadTooSlow
from slserve.spec import Datatype, FunctionSpec

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
JSON_NUMBER_BYTES = 26  # the longest a float32 or int64 is written in JSON, with its separator
JSON_STRING_FACTOR = 2  # a string's bytes as JSON: non-ASCII escaped (\uXXXX) by most encoders
TENSOR_OVERHEAD = 512  # an input's name, datatype, shape and parameters
BODY_MARGIN = 1.25
BODY_FLOOR = 64 * 1024  # room for request parameters, outputs asked for, whitespace
NEXT_CHUNK = 64 * 1024  # what the next read is assumed to bring, for the rate check
UNTIMED_BYTES = 64 * 1024
# A body holds the budget twice over: its bytes, and what decoding them makes (Python objects, then arrays).
DECODE_FACTOR = 2


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nothing to answer."""


def body_limit(spec: FunctionSpec | PipelineSpec, max_elements: int, ceiling: int) -> int:
    """The largest body a valid request to a function with this spec can need, at most `ceiling`."""
    rows = spec.limits.max_rows
    total = 0
    for tensor in spec.signature.inputs:
        shape = list(tensor.shape) or [1]
        first = rows if shape[0] < 0 else min(rows, shape[0])
        rest = shape[1:]
        per_row = max_elements if any(d < 0 for d in rest) else math.prod(rest)
        elements = min(max_elements, first * per_row)
        if tensor.datatype is Datatype.BYTES:
            per_element = JSON_STRING_FACTOR * spec.limits.max_bytes_per_element + 4
        else:
            per_element = JSON_NUMBER_BYTES
        total += elements * per_element + TENSOR_OVERHEAD
    return min(ceiling, int(total * BODY_MARGIN) + BODY_FLOOR)


class Intake:
    def __init__(self, budget_bytes: int, share: float, min_bytes_per_s: float, grace_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.share_bytes = int(budget_bytes * share)
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.held = 0  # bytes requests in flight hold: their bodies (declared, or received so far), twice
        self.held_by: dict[str, int] = {}  # ... by tenant

    def hold(self, size: int, what: str, tenant: str) -> int:
        """Take `size` bytes of the budget for `tenant`, or refuse with 503 when it would pass the budget or
        the tenant's share of it."""
        mine = self.held_by.get(tenant, 0)
        if mine + size > self.share_bytes:
            raise UploadsFull(
                f"your requests in flight hold {mine >> 20} MB of request bodies and their decoding, a tenant's "
                f"share of the gateway's budget (inflight_body_share) is {self.share_bytes >> 20} MB, and this "
                f"body's {what} would pass it; retry once some of your requests have been answered",
                retry_after=1.0,
            )
        if self.held + size > self.budget_bytes:
            raise UploadsFull(
                f"the gateway holds {self.held >> 20} MB of request bodies and their decoding, its budget "
                f"(inflight_body_mb) is {self.budget_bytes >> 20} MB, and this body's {what} would pass it; "
                "retry shortly",
                retry_after=1.0,
            )
        self.held += size
        self.held_by[tenant] = mine + size
        return size

    def release(self, size: int, tenant: str) -> None:
        self.held -= size
        left = self.held_by.pop(tenant, 0) - size
        if left:
            self.held_by[tenant] = left

    async def read(
        self, headers: dict[str, str], receive: Receive, limit: int, why: str, tenant: str
    ) -> tuple[bytes, int]:
        """The body, and the bytes it holds of the budget for `tenant` (give them back with `release` once the
        request ends). `why` says where `limit` comes from. A declared length is held before the body is read; without
        one, each chunk is held as it arrives."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit ({why})")
        held = self.hold(DECODE_FACTOR * int(declared), f"{declared} bytes", tenant) if declared.isdigit() else 0
        # A small declared body holds too little of the budget for its pace to matter: its read is not timed
        # (a timer costs microseconds on every request, most of which are small).
        timed = not declared.isdigit() or int(declared) > UNTIMED_BYTES
        chunks: list[bytes] = []
        size, started = 0, time.monotonic()
        try:
            more = True
            while more:
                message = await self._next(receive, size, started) if timed else await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the {limit}-byte limit ({why})")
                if not declared.isdigit():
                    held += self.hold(DECODE_FACTOR * len(chunk), "next chunk", tenant)
                chunks.append(chunk)
                more = message.get("more_body", False)
        except BaseException:
            self.release(held, tenant)
            raise
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        kept = DECODE_FACTOR * len(body)  # what it really holds: a client may send less than it declared
        self.held += kept - held
        self.held_by[tenant] = self.held_by.get(tenant, 0) + kept - held
        return body, kept

    async def _next(self, receive: Receive, size: int, started: float) -> MutableMapping[str, Any]:
        """The next message, or 408 when the body so far has come slower than the minimum rate allows."""
        wait_s = self.grace_s + (size + NEXT_CHUNK) / self.min_bytes_per_s - (time.monotonic() - started)
        # Checked on every message as well as by the timer: a body dribbled in tiny messages never leaves a pause
        # long enough for the timer to fire, however far behind the minimum rate it falls.
        if wait_s <= 0:
            raise self._too_slow(size, started)
        try:
            async with asyncio.timeout(wait_s):  # a timer, not a task: cheap on every request
                return await receive()
        except TimeoutError:
            raise self._too_slow(size, started) from None

    def _too_slow(self, size: int, started: float) -> UploadTooSlow:
        return UploadTooSlow(
            f"the request body arrived slower than {self.min_bytes_per_s / 1024:g} KB/s ({size} bytes in "
            f"{time.monotonic() - started:.1f} s; min_upload_kb_per_s); send it without pauses"
        )
