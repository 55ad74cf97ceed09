"""How a request's body comes in, so that one tenant's uploads cannot slow another's requests:

- **A limit per function**: the largest body a valid request to it can need (its signature, `limits.max_rows`,
  `limits.max_bytes_per_element`, with a margin), never above the server's `max_body_mb`. A body declared over it
  (`Content-Length`) is refused before a byte is read; one sent without a length is counted as it streams.
- **A budget for the gateway**: the bytes all requests in flight hold (`inflight_body_mb`), each body counted
  twice (its bytes, and what decoding them makes). A body that would take the gateway past it is refused with
  503 and Retry-After before it is read (or as it streams), so a crowd of big uploads costs bounded memory.
- **A minimum rate**: after a grace, a body must keep arriving at `min_upload_kb_per_s`; a slower one is cut
  with 408, so slow uploads cannot hold their share of the budget (or a connection) for long.

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
    def __init__(self, budget_bytes: int, min_bytes_per_s: float, grace_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.held = 0  # bytes held by requests in flight (declared, or received so far)

    def hold(self, size: int, what: str) -> int:
        """Take `size` bytes of the budget, or refuse with 503 when it would pass it."""
        if self.held + size > self.budget_bytes:
            raise UploadsFull(
                f"the gateway holds {self.held >> 20} MB of request bodies, its budget (inflight_body_mb) is "
                f"{self.budget_bytes >> 20} MB, and {what} would pass it; retry shortly",
                retry_after=1.0,
            )
        self.held += size
        return size

    def release(self, size: int) -> None:
        self.held -= size

    async def read(self, headers: dict[str, str], receive: Receive, limit: int, why: str) -> tuple[bytes, int]:
        """The body, and the bytes it holds of the budget (give them back with `release` once the request
        ends). `why` says where `limit` comes from."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit ({why})")
        upfront = 0
        if declared.isdigit():
            upfront = self.hold(DECODE_FACTOR * int(declared), f"this body's {declared} bytes (and its decoding)")
        streamed = [0]  # without a declared length: held chunk by chunk, as they arrive
        try:
            body = await self._receive(receive, limit, why, streamed if not upfront else None)
        except BaseException:
            self.release(upfront + streamed[0])
            raise
        held = DECODE_FACTOR * len(body)  # what the body really holds (a client may send less than it declared)
        self.held += held - upfront - streamed[0]
        return body, held

    async def _receive(self, receive: Receive, limit: int, why: str, streamed: list[int] | None) -> bytes:
        chunks: list[bytes] = []
        size, started = 0, time.monotonic()
        while True:
            wait_s = self.grace_s + (size + NEXT_CHUNK) / self.min_bytes_per_s - (time.monotonic() - started)
            try:
                async with asyncio.timeout(max(0.05, wait_s)):  # a timer, not a task: cheap on every request
                    message = await receive()
            except TimeoutError:
                raise UploadTooSlow(
                    f"the request body arrived slower than {self.min_bytes_per_s / 1024:g} KB/s ({size} bytes in "
                    f"{time.monotonic() - started:.1f} s; min_upload_kb_per_s); send it without pauses"
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the {limit}-byte limit ({why})")
            if streamed is not None:
                streamed[0] += self.hold(DECODE_FACTOR * len(chunk), "this body's next chunk (and its decoding)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
