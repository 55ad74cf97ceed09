"""A real `slserve serve` process on a free loopback port, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=120, **kwargs)

    def status(self, function: str) -> dict[str, Any]:
        doc = self.get("/slserve/functions").json()
        return next(f for f in doc["functions"] if f["name"] == function)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(functions: Path, artifacts: Path, log: Path, **env: str) -> Server:
    port = free_port()
    code = "from slserve.cli import main; main()"
    args = ["serve", "--port", str(port), "--functions", str(functions), "--artifacts", str(artifacts)]
    full_env = {**os.environ, **{f"SLSERVE_{k.upper()}": v for k, v in env.items()}}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slserve serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"slserve serve did not become ready:\n{log.read_text()}")
