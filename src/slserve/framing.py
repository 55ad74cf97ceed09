"""Length-prefixed frames (u32 little-endian length | body) out of a byte stream, with one copy at most.

Readers ask `buffer()` where the next read should land (`recv_into`, `os.readv`, or an asyncio
`BufferedProtocol`), then report how much arrived with `received(n)`, which returns the frames completed.
Small frames are staged in a reusable buffer and copied out once. A frame too big for the staging buffer gets a
buffer of its exact size as soon as its length is known, and the stream is read straight into it: a 4 MB
tensor crosses the socket into its final place, with no accumulate-and-slice copies.
"""

from __future__ import annotations

import socket
import struct

LENGTH = struct.Struct("<I")
STAGE_BYTES = 256 * 1024
SOCKET_BUFFER_BYTES = 4 << 20  # the kernel caps it at net.core.{w,r}mem_max


class FrameAssembler:
    def __init__(self, stage_bytes: int = STAGE_BYTES) -> None:
        self._stage = bytearray(stage_bytes)
        self._view = memoryview(self._stage)
        self._start = 0  # staged bytes not yet consumed: [_start, _end)
        self._end = 0
        self._big: bytearray | None = None  # a large frame's body being filled in place
        self._big_fill = 0

    def buffer(self) -> memoryview:
        """Where the next bytes from the stream go (never empty)."""
        if self._big is not None:
            return memoryview(self._big)[self._big_fill :]
        if self._end == len(self._stage):
            self._compact()
        return self._view[self._end :]

    def received(self, n: int) -> list[bytearray | bytes]:
        """`n` bytes were written into the last `buffer()`; returns the frame bodies now complete, in order."""
        if self._big is not None:
            self._big_fill += n
            if self._big_fill < len(self._big):
                return []
            done, self._big = self._big, None
            return [done]
        self._end += n
        frames: list[bytearray | bytes] = []
        while self._end - self._start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._stage, self._start)
            body = self._start + LENGTH.size
            if self._end - body >= length:
                frames.append(bytes(self._view[body : body + length]))
                self._start = body + length
                continue
            if LENGTH.size + length > len(self._stage):  # will never fit: read the rest in place
                self._big = bytearray(length)
                self._big_fill = self._end - body
                self._big[: self._big_fill] = self._view[body : self._end]
                self._start = self._end = 0
            elif body + length > len(self._stage):  # fits once moved to the front
                self._compact()
            break
        if self._start == self._end:
            self._start = self._end = 0
        return frames

    def _compact(self) -> None:
        pending = self._end - self._start
        self._stage[:pending] = self._view[self._start : self._end].tobytes()  # a copy: the ranges may overlap
        self._start, self._end = 0, pending


def frame(body_length: int) -> bytes:
    """The length prefix of a frame whose body has `body_length` bytes."""
    return LENGTH.pack(body_length)


def widen_buffers(sock: socket.socket) -> None:
    """Kernel buffers big enough for a large tensor in a few writes: with the kernel's default a frame of a few
    MB takes tens of sender/receiver hand-offs each way (the round trip's figures: RESULTS.md, `transport.py`)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
