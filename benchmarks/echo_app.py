"""Floors for one HTTP round trip, measured beside the gateway on its server stack (uvicorn + uvloop + httptools
+ Starlette):

- `POST /echo` returns the body;
- `POST /hop` sends the body through one process hop and returns what comes back: a length-prefixed frame over
  a unix socket pair to a forked child that echoes it (a blocking loop, as an instance's). The gateway's own
  path has this hop too, so `/hop` minus `/echo` is what the process boundary itself costs, and anything the
  gateway adds beyond `/hop` is its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from slserve.framing import LENGTH


def echo_child(sock: socket.socket) -> None:
    while header := sock.recv(LENGTH.size, socket.MSG_WAITALL):
        (n,) = LENGTH.unpack(header)
        sock.sendall(header + sock.recv(n, socket.MSG_WAITALL))


class Hop(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= LENGTH.size:
            (n,) = LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < LENGTH.size + n:
                return
            body = bytes(self.buffer[LENGTH.size : LENGTH.size + n])
            del self.buffer[: LENGTH.size + n]
            self.waiting.popleft().set_result(body)

    async def call(self, body: bytes) -> bytes:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(LENGTH.pack(len(body)) + body)
        return await future


ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
hop = Hop()
hop_child_forked = False


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def forward(request: Request) -> Response:
    return Response(await hop.call(await request.body()), media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    if hop_child_forked:  # not when another server imports the app (server_stack.py): only /echo is used there
        await asyncio.get_running_loop().connect_accepted_socket(lambda: hop, ours)
    yield


app = Starlette(
    routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/hop", forward, methods=["POST"]),
        Route("/ready", lambda r: Response("ok")),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    if os.fork() == 0:
        ours.close()
        echo_child(theirs)
        os._exit(0)
    theirs.close()
    hop_child_forked = True
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
