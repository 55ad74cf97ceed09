"""An instance's state follows its process: one killed while a process it forked still holds its socket is
gone from the status (not `idle` or `draining` for as long as the socket lives), and the function serves on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.integration.server import Server
from tests.reliability.hazards import bearer, fine, orphaning

from slserve.accounts.keys import new_key

HELD_S = 60  # how long the forked process holds the instance's socket: far longer than the wait below


def instance_pids(server: Server, function: str) -> set[int]:
    return {i["pid"] for i in server.status(function)["instances"] if i["pid"] is not None}


def test_an_instance_whose_process_is_gone_leaves_the_status_though_its_socket_lives(server: Server) -> None:
    key = server.keys().create(new_key("states"))
    r = server.post("/v2/models/hazards-eco/infer", json=orphaning(HELD_S), headers=bearer(key))
    assert r.status_code == 200, r.text
    (pid,) = instance_pids(server, "hazards-eco")
    holder = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    try:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while pid in instance_pids(server, "hazards-eco") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid not in instance_pids(server, "hazards-eco"), server.status("hazards-eco")
        r = server.post("/v2/models/hazards-eco/infer", json=fine(), headers=bearer(key))
        assert r.status_code == 200, r.text
    finally:
        for child in holder:
            os.kill(child, signal.SIGKILL)
