"""The README's routing commands, run as written against a gateway serving the samples' two classifier versions.
The CLI finds the gateway through the address it recorded in its state folder (no --url anywhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import FUNCTIONS, ROOT
from tests.integration.server import start_server
from tests.integration.test_platform import wait_for

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function


def readme_block(after: str) -> list[str]:
    """The command lines of the first ```sh block after the text `after` in the README."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(after) :], re.S)
    assert block is not None
    lines, joined = [], ""
    for line in block.group(1).splitlines():
        joined += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(joined)
            joined = ""
    return [line for line in lines if line.strip()]


def run(line: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    """One README line, with our interpreter for `.venv/bin/slserve` and the test gateway's address for curl's."""
    slserve = f'"{sys.executable}" -c "from slserve.cli import main; main()"'
    command = line.replace(".venv/bin/slserve", slserve).replace("http://127.0.0.1:8080", url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLSERVE_")}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_readme_routing_commands_run_as_written(tmp_path: Path) -> None:
    functions, store = tmp_path / "functions", ArtifactStore(tmp_path / ".slserve/artifacts")
    for name in ("classifier", "classifier-v2"):
        shutil.copytree(FUNCTIONS / name, functions / name)
        build_function(load_function(functions / name), store)
    state = tmp_path / ".slserve/state"
    server = start_server(
        functions, store.root, tmp_path / "serve.log", state=state, routes=str(tmp_path / ".slserve/routes.toml")
    )
    (state / "dev-key").write_text(server.key)  # as `make serve` leaves it, for the README's curl and the CLI
    try:
        denied = run(".venv/bin/slserve status --key wrong", tmp_path, server.url)
        assert denied.returncode == 2 and "error (unauthorized)" in denied.stderr
        lines = readme_block("so these run as written")
        assert len(lines) >= 7
        outputs = {}

        def shadowed() -> bool:  # the gateway reloads the routes file within a second of a change
            aliases = server.get("/slserve/routes").json()["models"]["classifier"]["aliases"]
            return "stable" in aliases and aliases["stable"]["shadow"] is not None

        for line in lines:
            if "route show" in line:  # shows what the running gateway serves: once it took in the changes above
                assert wait_for(shadowed, 10)
            ran = run(line, tmp_path, server.url)
            assert ran.returncode == 0, f"{line}\n{ran.stdout}\n{ran.stderr}"
            outputs[line.split("#")[0].strip()] = ran.stdout
        # What the commands did, as the running gateway saw it.
        show = next(out for line, out in outputs.items() if "route show" in line)
        assert "canary" in show and "1=90 2=10" in show and "2 at 50%" in show

        def canary() -> object:
            return server.get("/slserve/routes").json()["models"]["classifier"]["aliases"]["canary"]["split"]

        assert wait_for(lambda: canary() == {"1": 90, "2": 10}, 10), canary()  # promoted, then rolled back
        answer = json.loads(next(out for line, out in outputs.items() if line.startswith("curl")))
        assert answer["model_name"] == "classifier" and answer["model_version"] in ("1", "2")
        assert answer["outputs"][1]["data"] == [1]  # (3, 3, 0, 0) is the second cluster's centre

        # The canary is sticky per caller and reaches both versions across callers.
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3, 3, 0, 0]}]}
        seen = set()
        for caller in range(60):
            r = server.post(
                "/v2/models/classifier/versions/canary/infer",
                json=body,
                headers={"x-slserve-routing-key": f"caller-{caller}"},
            )
            assert r.status_code == 200, r.text
            seen.add(r.json()["model_version"])
        assert seen == {"1", "2"}

        # A version that does not exist is refused with the versions that do; the routes stay as they were.
        bad = run(".venv/bin/slserve route set classifier canary 1=50 3=50", tmp_path, server.url)
        assert bad.returncode == 2 and "['1', '2']" in bad.stderr
        # Rollback undoes every change, the first included, down to no routes file at all.
        while (undo := run(".venv/bin/slserve route rollback", tmp_path, server.url)).returncode == 0:
            pass
        assert "no earlier routes" in undo.stderr and not (tmp_path / ".slserve/routes.toml").exists()
    finally:
        server.stop()
    # The gateway recorded its address while it ran (the commands above found it there), and took the record
    # away when it stopped.
    assert not (state / "gateway.json").exists()
