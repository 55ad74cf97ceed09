"""The client samples in samples/clients, each run as a user runs it, against a live gateway serving MiniLM, so
that they never rot. They find the key where `make serve` leaves it (`.slserve/state/dev-key`, from their working
folder) and the gateway where it recorded its address (`.slserve/state/gateway.json`), as the CLI does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from tests.conftest import FUNCTIONS, ROOT
from tests.integration.server import Server, start_server

CLIENTS = ROOT / "samples/clients"


@pytest.fixture(scope="module")
def server(build_sample, sample_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("clients")
    build_sample("minilm-onnx")
    shutil.copytree(FUNCTIONS / "minilm-onnx", work / "functions/minilm-onnx")
    state = work / ".slserve/state"
    srv = start_server(work / "functions", sample_store.root, work / "serve.log", state=state)
    (state / "dev-key").write_text(srv.key + "\n")  # where `make serve` leaves the dev key
    yield srv
    srv.stop()


def run(server: Server, *command: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLSERVE_")}
    done = subprocess.run(
        command, cwd=server.state.parent.parent, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_curl(server: Server) -> None:
    out = run(server, "bash", str(CLIENTS / "curl.sh"), "serverless inference")
    assert '"model_name":"minilm"' in out and '"shape":[1,384]' in out


def test_httpx(server: Server) -> None:
    out = run(server, sys.executable, str(CLIENTS / "httpx_client.py"), "one", "two")
    assert "'one': 384 floats" in out and "'two': 384 floats" in out
    assert "function minilm-onnx, tier standard, cost" in out


def test_triton_client_json_and_binary(server: Server) -> None:
    out = run(server, sys.executable, str(CLIENTS / "triton_client.py"))
    assert "JSON tensors: (2, 384) float32, norms [1. 1.]" in out
    assert "binary tensors: (2, 384) float32, norms [1. 1.]" in out
    assert "'name': 'text'" in out


def test_openai_client(server: Server) -> None:
    out = run(server, sys.executable, str(CLIENTS / "openai_client.py"), "serverless inference")
    assert "'serverless inference': 384 floats" in out and "usage:" in out
    assert "as expected: 404" in out
