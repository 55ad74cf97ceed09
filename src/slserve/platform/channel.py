"""One end of a unix socket of wire frames (`platform.wire`): between the platform and its instances, and
between front workers and the platform process.

Frames in are handled in the event loop's read callback (no reader task to wake per message), read straight
into the frame assembler's buffers. Frames out that are sent in one turn of the loop are written together:
under load a batch's answers, or a front's requests, cost one write, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from slserve.framing import FrameAssembler
from slserve.platform.wire import Message, decode, encode


class FrameChannel(asyncio.BufferedProtocol):
    def __init__(self, on_message: Callable[[Message], None]) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._frames = FrameAssembler()
        self._out: list[bytes | memoryview] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        for body in self._frames.received(nbytes):
            self.on_message(decode(body))  # tensors are views into `body`

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, msg: Message) -> None:
        """Written at the end of this turn of the loop, with whatever else is sent in it (dropped if closed)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._write)
        self._out += encode(msg)

    def close(self) -> None:
        """What was sent goes out first (the transport writes its buffer before it closes)."""
        self._write()
        if self.transport is not None:
            self.transport.close()

    def _write(self) -> None:
        out, self._out = self._out, []
        if self.open:
            assert self.transport is not None
            self.transport.writelines(out)
