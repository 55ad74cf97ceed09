"""Floors for one HTTP round trip, measured beside the gateway on its server stack (uvicorn + uvloop + httptools
+ Starlette):

- `POST /echo` returns the body;
- `POST /hop` sends the body through one process hop and returns what comes back: a length-prefixed frame over
  a unix socket pair to a forked child that echoes it (a blocking loop, as an instance's). The gateway's own
  path has this hop too, so `/hop` minus `/echo` is what the process boundary itself costs, and anything the
  gateway adds beyond `/hop` is its own work.
- `POST /v2hop/{model}` is the protocol's own floor: what any gateway must do to serve a v2 request from a
  process instance, with slserve's code and nothing else. It parses the v2 body against the sample's signature
  (`parse_infer`), sends the tensors to a second forked child as a wire frame through the pool's own
  `FrameChannel`, which the child reads with the instance's `Connection` and answers with a RESULT frame
  of the declared outputs (zeros, no model), and encodes the v2 response (`encode_infer`). No API key, route,
  limits, timeout, metrics, pool queue or batching. With `?wait_ms=W` the child keeps its core busy for W ms
  before answering, as a model call would (a process that waited 26 ms for a model wakes slower than one that
  waited 0.2 ms; sleeping instead of spinning lets the core idle, which costs more to wake from than a model
  call does), and reports that time in `x-slserve-compute-ms`, as an instance reports its model call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from slserve.framing import LENGTH
from slserve.platform.base import InferResult
from slserve.platform.channel import FrameChannel
from slserve.platform.local.instance_process import Connection
from slserve.platform.v2 import HEADER_LENGTH, RequestLimits, encode_infer, parse_infer
from slserve.platform.wire import Kind, Message
from slserve.runtime.tensors import NUMPY_OF
from slserve.spec import load_function

SAMPLES = Path(__file__).resolve().parents[1] / "functions"
FLOORS = {"classifier": load_function(SAMPLES / "classifier"), "minilm": load_function(SAMPLES / "minilm-torch")}


def zeros_for(model: str, rows: int) -> dict[str, np.ndarray]:
    """The model's declared outputs for `rows` rows, as zeros."""
    outputs = FLOORS[model].spec.signature.outputs
    return {t.name: np.zeros([rows if d == -1 else d for d in t.shape], NUMPY_OF[t.datatype]) for t in outputs}


def echo_child(sock: socket.socket) -> None:
    while header := sock.recv(LENGTH.size, socket.MSG_WAITALL):
        (n,) = LENGTH.unpack(header)
        sock.sendall(header + sock.recv(n, socket.MSG_WAITALL))


def instance_child(sock: socket.socket) -> None:
    """Answers INFER frames as an instance would, minus the model: zeros of the declared outputs."""
    conn = Connection(sock)
    while not conn.closed:
        for msg in conn.receive(None):
            rows = len(next(iter(msg.tensors.values())))
            started = time.perf_counter()
            until = started + msg.meta["wait_ms"] / 1000
            while time.perf_counter() < until:  # busy, like a model call
                pass
            meta = {"compute_ms": (time.perf_counter() - started) * 1000, "batch_size": 1, "tokens": None}
            conn.send(Message(Kind.RESULT, msg.request_id, meta, zeros_for(msg.meta["model"], rows)))


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


class FloorChannel:
    """The gateway's end of the floor's instance: the pool's own `FrameChannel`, answers in order."""

    def __init__(self) -> None:
        self.waiting: deque[asyncio.Future[Message]] = deque()
        self.protocol: FrameChannel | None = None

    async def connect(self, sock: socket.socket) -> None:
        protocol = self.protocol = FrameChannel(lambda msg: self.waiting.popleft().set_result(msg))
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)

    async def call(self, msg: Message) -> Message:
        assert self.protocol is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.protocol.send(msg)
        return await future


ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
ours_v2, theirs_v2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
hop = Hop()
floor = FloorChannel()
hop_child_forked = False


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def forward(request: Request) -> Response:
    return Response(await hop.call(await request.body()), media_type="application/json")


async def v2_floor(request: Request) -> Response:
    model = request.path_params["model"]
    fdef = FLOORS[model]
    limits = RequestLimits(16 * 1024 * 1024, fdef.spec.limits.max_rows)  # the gateway's default element limit
    v2 = parse_infer(fdef, await request.body(), request.headers.get(HEADER_LENGTH), limits)
    wait_ms = float(request.query_params.get("wait_ms", 0))
    meta = {"model": model, "outputs": v2.request.outputs, "wait_ms": wait_ms}
    reply = await floor.call(Message(Kind.INFER, 1, meta, v2.request.inputs))
    result = InferResult(reply.tensors, model, "1", "floor", 0.0, reply.meta["compute_ms"], reply.meta["batch_size"])
    body, headers = encode_infer(result, model, v2)
    headers["x-slserve-compute-ms"] = f"{result.compute_ms:.2f}"
    return Response(body, headers=headers)


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    if hop_child_forked:  # not when another server imports the app (server_stack.py): only /echo is used there
        await asyncio.get_running_loop().connect_accepted_socket(lambda: hop, ours)
        await floor.connect(ours_v2)
    yield


app = Starlette(
    routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/hop", forward, methods=["POST"]),
        Route("/v2hop/{model}", v2_floor, methods=["POST"]),
        Route("/ready", lambda r: Response("ok")),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    # Each child keeps only its own end: a child holding any other end would keep its sibling from seeing EOF
    # when the server exits.
    if os.fork() == 0:
        for s in (ours, ours_v2, theirs_v2):
            s.close()
        echo_child(theirs)
        os._exit(0)
    if os.fork() == 0:
        for s in (ours, theirs, ours_v2):
            s.close()
        instance_child(theirs_v2)
        os._exit(0)
    theirs.close()
    theirs_v2.close()
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
