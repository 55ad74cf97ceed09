"""Run inside a rebuilt Modal container environment (`test_modal_image.py`): import the module Modal imports in
every container, make each class's web endpoint through the client's local execution (`.local()`: the snapshot
hook, the restore hook, then the ASGI app), and send it one v2 request over plain ASGI. Prints one JSON line per
class (argv: {class: [path, request]}, the secret): its status and body. Imports nothing but what the image has."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def call(app: Any, path: str, body: bytes, secret: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("modal", 443),
    }
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the answer is made
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def main() -> None:
    import slserve.modal.container as container

    requests: dict[str, Any] = json.loads(sys.argv[1])
    secret = sys.argv[2]
    for cls_name, (path, request) in requests.items():
        app = getattr(container, cls_name)().web.local()
        status, body = asyncio.run(call(app, path, json.dumps(request).encode(), secret))
        print(json.dumps({"class": cls_name, "status": status, "body": body.decode()}), flush=True)


if __name__ == "__main__":
    main()
