"""A Lambda Runtime API peer (version 2018-06-01, as AWS documents it) for running real handlers under the
official runtime client (`python -m awslambdaric module.handler`) on this machine.

    GET  /2018-06-01/runtime/invocation/next            -> the next event, with its Lambda-Runtime-* headers
    POST /2018-06-01/runtime/invocation/{id}/response   -> the handler's result
    POST /2018-06-01/runtime/invocation/{id}/error      -> the handler's error
    POST /2018-06-01/runtime/init/error                 -> the init phase failed

TCP_NODELAY is set on every connection: without it each leg waits ~40 ms on delayed ACKs.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.lambda_sandbox import Sandbox

PREFIX = "/2018-06-01/runtime"


@dataclass
class Outcome:
    ok: bool
    body: Any
    error_type: str | None = None


@dataclass
class RuntimeAPI:
    """The peer's state: events waiting for the runtime, and what came back."""

    events: queue.Queue[tuple[str, bytes, float]] = field(default_factory=queue.Queue)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    init_error: Any = None
    done: threading.Condition = field(default_factory=threading.Condition)
    next_calls: int = 0

    def invoke(self, event: Any, timeout_s: float = 60, deadline_s: float = 30) -> Outcome:
        """Queue `event`, wait for the handler's outcome."""
        request_id = str(uuid.uuid4())
        self.events.put((request_id, json.dumps(event).encode(), time.time() + deadline_s))
        with self.done:
            if not self.done.wait_for(lambda: request_id in self.outcomes or self.init_error is not None, timeout_s):
                raise TimeoutError(f"no outcome for {request_id} in {timeout_s} s")
        if request_id not in self.outcomes:
            raise RuntimeError(f"the init phase failed: {self.init_error}")
        return self.outcomes.pop(request_id)

    def finish(self, request_id: str, outcome: Outcome) -> None:
        with self.done:
            self.outcomes[request_id] = outcome
            self.done.notify_all()

    def failed_init(self, error: Any) -> None:
        with self.done:
            self.init_error = error
            self.done.notify_all()


class _PeerHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no Nagle delay, quiet: as AWS's endpoints behave for the clients under test."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _handler(api: RuntimeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(_PeerHandler):
        def do_GET(self) -> None:
            if self.path != f"{PREFIX}/invocation/next":
                self._reply(404)
                return
            api.next_calls += 1
            request_id, body, deadline = api.events.get()
            headers = {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(deadline * 1000)),
                "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:slserve-test",
                "Lambda-Runtime-Trace-Id": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=0",
                "Content-Type": "application/json",
            }
            self._reply(200, body, headers)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = self.path.removeprefix(PREFIX).strip("/").split("/")
            if parts == ["init", "error"]:
                api.failed_init(json.loads(body or b"null"))
                self._reply(202, b'{"status":"OK"}')
            elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                ok = parts[2] == "response"
                outcome = Outcome(
                    ok, json.loads(body or b"null"), self.headers.get("Lambda-Runtime-Function-Error-Type")
                )
                api.finish(parts[1], outcome)
                self._reply(202, b'{"status":"OK"}')
            else:
                self._reply(404)

    return Handler


@dataclass
class Environment:
    """One execution environment: the peer, and a runtime client process running a handler against it."""

    api: RuntimeAPI
    server: ThreadingHTTPServer
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.server.shutdown()
        self.server.server_close()


def start_environment(
    handler: str,
    env: Mapping[str, str],
    log: Path,
    python: str = sys.executable,
    sandbox: Sandbox | None = None,
) -> Environment:
    """The handler under the runtime client against a peer of its own: in this interpreter's environment, or
    in `sandbox` (a clean interpreter, the package read-only, nothing inherited from this process)."""
    api = RuntimeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    full_env = {
        **(sandbox.base_env() if sandbox else os.environ),
        "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "slserve-test",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **env,
    }
    with log.open("wb") as out:
        command = sandbox.command(handler) if sandbox else [python, "-m", "awslambdaric", handler]
        proc = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    return Environment(api, server, proc, log)


@dataclass
class InvokeAPI:
    """Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`), as boto3 calls it, in front of
    execution environments run by the runtime client: what the gateway's `aws` executor talks to."""

    environments: dict[str, Environment] = field(default_factory=dict)
    throttled: set[str] = field(default_factory=set)  # functions answering 429 TooManyRequestsException
    calls: list[tuple[str, str | None]] = field(default_factory=list)  # (function, qualifier)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> InvokeAPI:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _invoke_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _invoke_handler(api: InvokeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(_PeerHandler):
        def do_POST(self) -> None:
            from urllib.parse import parse_qs, unquote, urlparse

            url = urlparse(self.path)
            payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[:2] != ["2015-03-31", "functions"] or parts[3] != "invocations":
                self._reply(404, b"{}", {})
                return
            name = unquote(parts[2])
            qualifier = parse_qs(url.query).get("Qualifier", [None])[0]
            api.calls.append((name, qualifier))
            if name in api.throttled:
                error = {
                    "Type": "User",
                    "message": "Rate Exceeded.",
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                }
                self._reply(429, json.dumps(error).encode(), {"x-amzn-ErrorType": "TooManyRequestsException"})
                return
            environment = api.environments.get(name)
            if environment is None:
                error = {"Type": "User", "Message": f"Function not found: {name}"}
                self._reply(404, json.dumps(error).encode(), {"x-amzn-ErrorType": "ResourceNotFoundException"})
                return
            outcome = environment.api.invoke(json.loads(payload))
            headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "1"}
            if not outcome.ok:
                headers["X-Amz-Function-Error"] = "Unhandled"
            self._reply(200, json.dumps(outcome.body).encode(), headers)

    return Handler
