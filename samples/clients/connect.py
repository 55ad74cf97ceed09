"""Where the gateway is and which key to use, as the slserve CLI finds them: SLSERVE_URL, else the address the
running gateway recorded in `.slserve/state/gateway.json`, else http://127.0.0.1:8080; SLSERVE_API_KEY, else the
dev key `make serve` saved in `.slserve/state/dev-key`. Run the samples from the folder you ran `make serve` in."""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE = Path(os.environ.get("SLSERVE_STATE", ".slserve/state"))


def gateway_url() -> str:
    if url := os.environ.get("SLSERVE_URL"):
        return url.rstrip("/")
    recorded = STATE / "gateway.json"
    return str(json.loads(recorded.read_text())["url"]) if recorded.is_file() else "http://127.0.0.1:8080"


def api_key() -> str:
    return os.environ.get("SLSERVE_API_KEY") or (STATE / "dev-key").read_text().strip()
