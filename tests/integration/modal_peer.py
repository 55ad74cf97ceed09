"""A stand-in for a deployed Modal endpoint: slserve's real endpoint app (`slserve.remote.endpoint`, what the
generated Modal class serves) under uvicorn, behind what Modal's own front does when things go wrong, switched
by the test through `POST /_peer/mode`:

- `normal`: the endpoint answers;
- `throttle`: 429 with Retry-After, as Modal answers when a function is at its container limit;
- `down`: 502 with an HTML page, as Modal's proxy answers when the container failed;
- `slow`: the answer waits `delay_s` first (a cold container, or a long call).

Run as `python -m tests.integration.modal_peer PORT` with SLSERVE_ARTIFACTS, SLSERVE_FUNCTION and
SLSERVE_ENDPOINT_SECRET set.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.types import Receive, Scope, Send
from tests.integration.server import free_port

from slserve.remote.endpoint import endpoint_app
from slserve.remote.model import ModelFunction


class ModalFront:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.mode = "normal"
        self.delay_s = 0.0
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/_peer/mode":
            body = orjson.loads(await _body(receive))
            self.mode, self.delay_s = body["mode"], float(body.get("delay_s", 0))
            await _send(send, 200, orjson.dumps({"calls": self.calls}), "application/json")
            return
        self.calls += 1
        if self.mode == "throttle":
            await _send(send, 429, b"Too Many Requests", "text/plain", ((b"retry-after", b"3"),))
        elif self.mode == "down":
            await _send(send, 502, b"<html><body>modal-http: app for invoked web endpoint is stopped</body></html>")
        else:
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            await self.app(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


Headers = tuple[tuple[bytes, bytes], ...]


async def _send(send: Send, status: int, body: bytes, content_type: str = "text/html", extra: Headers = ()) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Peer:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def mode(self, mode: str, delay_s: float = 0.0) -> int:
        """Switch the stand-in's behaviour; returns the calls it has had."""
        r = httpx.post(f"{self.url}/_peer/mode", json={"mode": mode, "delay_s": delay_s}, timeout=5)
        return int(r.json()["calls"])


def start_peer(artifacts: Path, function: str, secret: str, log: Path, port: int | None = None) -> Peer:
    """The stand-in on `port` (a free one by default; the same one as a stopped peer's: its redeploy)."""
    port = port or free_port()
    env = {
        **os.environ,
        "SLSERVE_ARTIFACTS": str(artifacts),
        "SLSERVE_FUNCTION": function,
        "SLSERVE_ENDPOINT_SECRET": secret,
    }
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "tests.integration.modal_peer", str(port)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    peer = Peer(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{peer.url}/v2/health/ready", timeout=2).status_code == 200:
                return peer
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the Modal stand-in did not start:\n{log.read_text()}")


def main() -> None:
    model = ModelFunction.from_environment()
    app = ModalFront(endpoint_app(model, os.environ.get("SLSERVE_ENDPOINT_SECRET")))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")


if __name__ == "__main__":
    main()
