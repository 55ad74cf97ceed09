"""A SIGTERM to the gateway's whole process group (systemd stopping the unit, `timeout`, a container's init)
reaches its templates and instances too: the work in flight is still answered, nothing is restarted on the way
out, and every process goes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.integration.server import start_server
from tests.reliability.hazards import fine, sleeping

from slserve.snapshot import ArtifactStore


def test_a_group_sigterm_drains_the_work_in_flight(hazard_functions: tuple[Path, ArtifactStore]) -> None:
    functions, store = hazard_functions
    srv = start_server(functions, store.root, functions.parent / "serve-group.log", own_group=True)
    try:
        assert srv.post("/v2/models/hazards/infer", json=fine()).status_code == 200  # an instance is up
        answers: list[int] = []
        slow = threading.Thread(
            target=lambda: answers.append(srv.post("/v2/models/hazards/infer", json=sleeping(1.5)).status_code)
        )
        slow.start()
        deadline = time.monotonic() + 10
        while srv.status("hazards")["in_flight"] == 0:  # the sleeping request is on an instance
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(srv.proc.pid, signal.SIGTERM)
        slow.join(timeout=30)
        assert answers == [200]  # answered, not cut off by the signal
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        log = srv.log.read_text()
        assert "restarting it" not in log and "ended (" not in log, log[-2000:]
        left = subprocess.run(["pgrep", "-g", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:  # templates and instances follow the gateway out
            time.sleep(0.05)
            left = subprocess.run(["pgrep", "-g", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        assert left == []
    finally:
        if srv.proc.poll() is None:
            os.killpg(srv.proc.pid, signal.SIGKILL)
