"""`slserve serve --workers N`: N front processes on one port and one platform process, kept running.

```
slserve supervisor          signals, restarts, the gateway's address (gateway.json)
├── slserve platform        templates, pools, instances, batching, the memory budget; keys' rate and
│   └── templates, …        concurrency (one unix socket to every front: `platform.local.service`)
├── slserve front 1         uvicorn on HOST:PORT with its own SO_REUSEPORT socket: HTTP, keys, bodies,
…                           decoding, routing, metering (`server.make_front`)
└── slserve front N
```

The kernel spreads new connections over the fronts' sockets. What a request's bill and replays depend on is
shared: the ledger, Idempotency-Key claims and quotas in the state folder's SQLite (the fleet's stores), rate and
concurrency in the platform. A front that dies loses only the connections it held (its accepted records are
in the ledger already; its admissions go back); it is started again, as is the platform, with a pause that grows
while it keeps dying. Ctrl-C or SIGTERM stops the fronts first (each drains its requests), then the platform.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from setproctitle import setproctitle

from slserve import server
from slserve.gateway import address, logs
from slserve.settings import ServeSettings

STABLE_S = 30.0  # a process that lived this long was not crashing: its next restart is immediate
MAX_PAUSE_S = 10.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
log = logging.getLogger("slserve.gateway")


def listening_socket(host: str, port: int) -> socket.socket:
    """One front's socket on the shared port; SO_REUSEPORT lets the kernel balance connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _end_with(supervisor: int) -> None:
    """SIGTERM when the supervisor dies, even by kill -9: a front must not serve on, unwatched, and the platform
    drains then (Linux's PR_SET_PDEATHSIG; the supervisor is one thread, whose end is the process's)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _front(settings: ServeSettings, platform_socket: Path, number: int, supervisor: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # not the supervisor's; uvicorn sets its own (a graceful drain)
    _end_with(supervisor)
    setproctitle(f"slserve front {number} {settings.host}:{settings.port}")
    server.make_front(settings, platform_socket).run(sockets=[listening_socket(settings.host, settings.port)])


def _platform(settings: ServeSettings, platform_socket: Path, supervisor: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's, until the platform sets its own
    _end_with(supervisor)
    setproctitle("slserve platform")
    server.platform(settings, platform_socket)


@dataclass
class Slot:
    """One process the supervisor keeps running: how to start it, and how it has been faring."""

    name: str
    target: Callable[..., None]
    args: tuple[object, ...]
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    due_at: float = 0.0  # when to start it again (after a pause while it keeps dying)

    def pause_s(self) -> float:
        return 0.0 if self.failures <= 1 else min(MAX_PAUSE_S, 0.5 * 2 ** (self.failures - 2))


class Supervisor:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._folder = Path(tempfile.mkdtemp(prefix="slserve-"))  # a unix socket's path must be short
        self.platform_socket = self._folder / "platform.sock"
        metrics = self._folder / "metrics"  # the fronts' counters, added up by any front's /metrics
        metrics.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)  # read by prometheus_client when a front imports it
        self._context = multiprocessing.get_context("fork")  # before this process has threads or a loop
        self._stopping = False

    def run(self) -> None:
        logs.configure(self.settings.log_level, self.settings.log_format)
        reserved = listening_socket(self.settings.host, self.settings.port)  # bound, never listening: the port
        port = int(reserved.getsockname()[1])
        n = self.settings.workers
        settings = self.settings.model_copy(
            update={"port": port, "inflight_body_mb": self.settings.inflight_body_mb / n}  # the host's, split
        )
        setproctitle(f"slserve supervisor {settings.host}:{port} ({n} workers)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        me = os.getpid()
        platform = Slot("platform", _platform, (settings, self.platform_socket, me))
        fronts = [Slot(f"front {i}", _front, (settings, self.platform_socket, i, me)) for i in range(1, n + 1)]
        for slot in (platform, *fronts):
            self._spawn(slot)
        address.record(settings.state, address.client_url(settings.host, port))
        log.info("gateway on %s:%d: %d front workers and the platform process", settings.host, port, n)
        try:
            self._watch(platform, fronts)
        finally:
            address.forget(settings.state)
            reserved.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _spawn(self, slot: Slot) -> None:
        process = self._context.Process(target=slot.target, args=slot.args, name=slot.name, daemon=False)
        process.start()
        slot.process, slot.started_at = process, time.monotonic()

    def _watch(self, platform: Slot, fronts: list[Slot]) -> None:
        while not self._stopping:
            alive = [s.process.sentinel for s in (platform, *fronts) if s.process is not None]
            multiprocessing.connection.wait(alive, timeout=0.2)
            now = time.monotonic()
            for slot in (platform, *fronts):
                if self._stopping:
                    break
                if slot.process is not None and not slot.process.is_alive():
                    self._died(slot, now)
                if slot.process is None and now >= slot.due_at:
                    self._spawn(slot)
        self._shut_down(platform, fronts)

    def _died(self, slot: Slot, now: float) -> None:
        assert slot.process is not None
        code = slot.process.exitcode
        slot.process.join()
        slot.process = None
        slot.failures = 1 if now - slot.started_at >= STABLE_S else slot.failures + 1
        slot.due_at = now + slot.pause_s()
        log.error("%s exited (code %s); starting it again in %.1f s", slot.name, code, slot.pause_s())

    def _shut_down(self, platform: Slot, fronts: list[Slot]) -> None:
        """The fronts drain first (their requests still need the platform), then the platform drains its own."""
        grace = self.settings.drain_seconds + 10
        for slot in fronts:
            _signal(slot.process, signal.SIGTERM)
        for slot in fronts:
            _join(slot.process, grace)
        _signal(platform.process, signal.SIGTERM)
        _join(platform.process, grace)


def _signal(process: BaseProcess | None, sig: int) -> None:
    if process is not None and process.pid is not None and process.is_alive():
        os.kill(process.pid, sig)


def _join(process: BaseProcess | None, timeout_s: float) -> None:
    if process is None:
        return
    process.join(timeout_s)
    if process.is_alive():
        log.error("%s did not stop within %.0f s; killing it", process.name, timeout_s)
        process.kill()
        process.join()
