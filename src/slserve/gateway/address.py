"""Where a running gateway listens, recorded in its state folder, so that the CLI finds it without being told."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

FILE = "gateway.json"


def client_url(host: str, port: int) -> str:
    """The address a client on this machine uses (a gateway on every interface is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def record(state: Path, url: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / f"{FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, state / FILE)


def forget(state: Path) -> None:
    """Remove the record if it is this process's (another gateway may have started on the same state since)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads((state / FILE).read_text())["pid"] == os.getpid():
            (state / FILE).unlink()


def find(state: Path) -> str | None:
    """The address of the gateway that recorded itself in `state`, if that process still runs."""
    try:
        doc = json.loads((state / FILE).read_text())
        os.kill(int(doc["pid"]), 0)
        return str(doc["url"])
    except (OSError, ValueError, KeyError, TypeError):  # no record, a broken one, or its process is gone
        return None
