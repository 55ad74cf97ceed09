"""The HTTP connection's own bounds, before a request exists: how big a request's head may be and how long it may
take to arrive.

uvicorn's httptools protocol has neither: httptools gathers a header's whole value before handing it over, so one
connection sending a header of 60 MB holds 60 MB, and a connection trickling its head a byte at a time (or
sending nothing at all) is kept open for ever. The intake (`intake.py`) bounds bodies; this bounds heads, the part
no ASGI app ever sees until it is complete.

A head still incomplete after `max_head_bytes` is answered 431 and the connection closed (a head that completes
within one read may pass the bound by that read, at most 256 KiB); a head not complete within `head_timeout_s`
of its connection opening, or of its first byte after an answered request, is answered 408. An idle kept-alive
connection is uvicorn's keep-alive timer's, as before.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from slserve.errors import HeadTooLarge, HeadTooSlow, SlserveError

LINGER_S = 2.0
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a request head bounded in size and in time."""

    max_head_bytes = 32 * 1024
    head_timeout_s = 10.0

    @classmethod
    def bounded(cls, max_head_bytes: int, head_timeout_s: float) -> type[BoundedHttpTools]:
        """This protocol with these bounds, as uvicorn's `http=` takes it (a class)."""
        bounds = {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s}
        return type("BoundedHttpTools", (cls,), bounds)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True  # until the parser says a head is complete
        self._head_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered: what was read before reading paused is dropped
        super().data_received(data)  # the parser's callbacks say where a head begins and ends
        if not self._in_head or self._lingering or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            limit = self.max_head_bytes // 1024
            self._refuse(HeadTooLarge(f"the request's line and headers are over {limit} KiB: send less in headers"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._lingering and not self.transport.is_closing():
            seconds = f"{self.head_timeout_s:g}"
            self._refuse(HeadTooSlow(f"the request's line and headers did not arrive within {seconds} s"))

    def _refuse(self, error: SlserveError) -> None:
        """Answer, stop reading, and close `LINGER_S` later: closing at once over unread bytes makes the kernel
        reset the connection, which can discard the answer before the client reads it; reading on to drop
        what it still sends (nginx's lingering close) would cost the loop a huge head's every byte."""
        body = orjson.dumps(error.to_dict())
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (error.status, REASONS[error.status], len(body))
        )
        self._stop_head_timer()
        self.transport.write(head + body)
        self.transport.pause_reading()
        self._lingering = True
        self.loop.call_later(LINGER_S, self.transport.close)
