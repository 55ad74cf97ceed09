"""Shared by the platform benchmarks: a gateway process with chosen functions, percentiles, machine notes."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".slserve/artifacts"
OUT = ROOT / "benchmarks/out"
Overrides = Mapping[str, Mapping[str, object]]  # section -> key -> value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def override(toml: str, section: str, key: str, value: object) -> str:
    """Set `key` in `[section]` of a function.toml's text (added if missing)."""
    literal = json.dumps(value)
    header = f"[{section}]"
    if header not in toml:
        return f"{toml.rstrip()}\n\n{header}\n{key} = {literal}\n"
    head, _, rest = toml.partition(header)
    body, sep, tail = rest.partition("\n[")
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    body = pattern.sub(f"{key} = {literal}", body) if pattern.search(body) else f"\n{key} = {literal}{body}"
    return head + header + body + sep + tail


def make_functions(
    target: Path, functions: Mapping[str, tuple[str, Overrides]], written: Mapping[str, str] | None = None
) -> Path:
    """functions: new name -> (sample to copy, overrides); written: name -> a function.toml of its own. Builds
    each into the default artifact store."""
    if target.exists():
        shutil.rmtree(target)
    for name, toml in (written or {}).items():
        (target / name).mkdir(parents=True)
        (target / name / "function.toml").write_text(toml)
    for name, (sample, overrides) in functions.items():
        shutil.copytree(ROOT / "functions" / sample, target / name)
        if not overrides:  # as it is (a pipeline's folder has no function.toml)
            continue
        spec = target / name / "function.toml"
        text = spec.read_text()
        for section, values in overrides.items():
            for key, value in values.items():
                text = override(text, section, key, value)
        spec.write_text(text)
    slserve = [sys.executable, "-c", "from slserve.cli import main; main()"]
    subprocess.run(
        [*slserve, "build", "--functions", str(target), "--artifacts", str(ARTIFACTS)], check=True, capture_output=True
    )
    return target


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    key: str  # an admin API key made for the run
    state: Path  # its keys and ledger

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def status(self, function: str) -> dict[str, Any]:
        request = urllib.request.Request(self.url + "/slserve/functions", headers=self.auth)
        with urllib.request.urlopen(request, timeout=10) as r:
            doc = json.loads(r.read())
        return next(f for f in doc["functions"] if f["name"] == function)

    def wait_for_zero(self, function: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.status(function)["instances"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{function} did not scale to zero")
            time.sleep(0.1)


@contextmanager
def gateway(
    functions: Path,
    routes: Path | None = None,
    metering: bool = True,
    log: Path | None = None,
    settings: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Gateway]:
    """A gateway on a free port with a fresh state folder (keys, ledger) and one admin key; `log` keeps its
    output (at info level), `settings` are SLSERVE_* variables without the prefix, `environ` others (OTEL_*)."""
    from slserve.accounts.keys import SQLiteKeyStore, new_key

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="slserve-bench-state-"))
    key = SQLiteKeyStore(state).create(new_key("bench", admin=True))
    cmd = [
        sys.executable,
        "-c",
        "from slserve.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--functions",
        str(functions),
        "--artifacts",
        str(ARTIFACTS),
    ]
    env = {**os.environ, **(environ or {}), "SLSERVE_LOG_LEVEL": "info" if log else "warning"}
    env["SLSERVE_STATE"] = str(state)
    env["SLSERVE_METERING"] = "true" if metering else "false"
    if routes is not None:
        env["SLSERVE_ROUTES"] = str(routes)
    env.update({f"SLSERVE_{k.upper()}": v for k, v in (settings or {}).items()})
    out = log.open("wb") if log else None
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
    gw = Gateway(f"http://127.0.0.1:{port}", proc, key, state)
    try:
        wait_ready(gw.url + "/v2/health/ready", proc)
        yield gw
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if out is not None:
            out.close()
        shutil.rmtree(state, ignore_errors=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def warm_page_cache(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def save(name: str, data: object) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2))
