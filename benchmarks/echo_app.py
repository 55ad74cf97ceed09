"""A bare echo endpoint on the gateway's server stack (uvicorn + uvloop + httptools + Starlette): the floor
for one HTTP round trip, measured beside the gateway."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/ready", lambda r: Response("ok"))])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
