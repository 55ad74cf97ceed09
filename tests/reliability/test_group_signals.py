"""A signal to the gateway's whole process group (Ctrl-C on `make serve`; SIGTERM from systemd stopping the unit,
`timeout`, a container's init) reaches its templates, instances and ledger writer too: the work in flight is
still answered and recorded, nothing is restarted or traced back on the way out, and every process goes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.server import start_server
from tests.reliability.hazards import fine, ledger_rows, sleeping

from slserve.snapshot import ArtifactStore


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_group_signal_drains_and_records_the_work_in_flight(
    hazard_functions: tuple[Path, ArtifactStore], sig: signal.Signals
) -> None:
    functions, store = hazard_functions
    srv = start_server(functions, store.root, functions.parent / f"serve-group-{sig.name}.log", own_group=True)
    try:
        assert srv.post("/v2/models/hazards/infer", json=fine()).status_code == 200  # an instance is up
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(srv.post("/v2/models/hazards/infer", json=sleeping(1.5))))
        slow.start()
        deadline = time.monotonic() + 10
        while srv.status("hazards")["in_flight"] == 0:  # the sleeping request is on an instance
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(srv.proc.pid, sig)
        slow.join(timeout=30)
        assert [r.status_code for r in answers] == [200]  # answered, not cut off by the signal
        assert srv.proc.wait(timeout=60) in (0, -sig, 128 + sig)  # the signal, re-raised once drained
        assert ledger_rows(srv.state, "request_id = ?", answers[0].headers["x-request-id"])[0][1] == 200
        log = srv.log.read_text()
        assert "restarting it" not in log and "ended (" not in log and "Traceback" not in log, log[-2000:]
        left = subprocess.run(["pgrep", "-g", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:  # templates and instances follow the gateway out
            time.sleep(0.05)
            left = subprocess.run(["pgrep", "-g", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        assert left == []
    finally:
        if srv.proc.poll() is None:
            os.killpg(srv.proc.pid, signal.SIGKILL)
