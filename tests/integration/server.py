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

from slserve.accounts.keys import SQLiteKeyStore, new_key
from slserve.platform.local.memory import descendants


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    state: Path
    key: str  # an admin key made for the test

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def keys(self) -> SQLiteKeyStore:
        return SQLiteKeyStore(self.state)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return httpx.get(self.url + path, timeout=60, headers=headers, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, timeout=120, headers=headers, **kwargs)

    def status(self, function: str) -> dict[str, Any]:
        doc = self.get("/slserve/functions").json()
        return next(f for f in doc["functions"] if f["name"] == function)

    def tree(self) -> dict[int, str]:
        """Every live process under the server (not itself), by pid, with its title (`slserve template torch`)."""
        found = {}
        for pid in descendants(self.proc.pid):
            try:
                state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue  # ended meanwhile
            if state != b"Z":
                found[pid] = title
        return found

    def fronts(self) -> list[int]:
        """The processes that serve HTTP: the gateway itself, or its front workers (`--workers N`)."""
        workers = [pid for pid, title in self.tree().items() if title.startswith("slserve front")]
        return workers or [self.proc.pid]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    functions: Path,
    artifacts: Path,
    log: Path,
    state: Path | None = None,
    own_group: bool = False,
    ready_path: str = "/v2/health/ready",
    environ: dict[str, str] | None = None,
    workers: int | None = None,
    **env: str,
) -> Server:
    """`slserve serve` on a free port, with its own state folder (keys, ledger) holding one admin key; returned
    once `ready_path` answers 200 (every function ready, by default). Hermetic: its routes and settings are its
    own (a routes.toml in its state folder, no slserve.toml), whatever the checkout or the shell hold. `env` are
    slserve's settings (`SLSERVE_` + the name); `environ`, other variables as they are (`OTEL_*`). `workers`:
    front processes (`--workers`); by default SLSERVE_TEST_WORKERS, or 1 (`make test-workers` runs the suite at 2)."""
    port = free_port()
    state = state or log.parent / f"state-{port}"
    key = SQLiteKeyStore(state).create(new_key("tests", admin=True))
    code = "from slserve.cli import main; main()"
    args = ["serve", "--port", str(port), "--functions", str(functions), "--artifacts", str(artifacts)]
    workers = workers or int(os.environ.get("SLSERVE_TEST_WORKERS", "1"))
    env = {
        "workers": str(workers),
        "state": str(state),
        "routes": str(state / "routes.toml"),
        "config": str(state / "slserve.toml"),
        **env,
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SLSERVE_")}
    full_env = {**inherited, **(environ or {}), **{f"SLSERVE_{k.upper()}": v for k, v in env.items()}}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=own_group,  # a process group of its own, for a test to signal as a whole
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log, state, key)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slserve serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"slserve serve did not become ready:\n{log.read_text()}")
