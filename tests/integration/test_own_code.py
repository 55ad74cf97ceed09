"""Bring your own model, as a newcomer does: `slserve init`, code in the function's folder, `slserve build` while
the gateway runs. Nothing on PYTHONPATH, nothing installed, no restart: the gateway serves the new function, then
its new code, and names the real error of code that cannot load."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from tests.integration.server import Server, start_server
from tests.integration.test_cli import slserve
from tests.integration.test_platform import wait_for

from slserve.runtime import load_runtime
from slserve.snapshot import ArtifactStore

X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)


def infer(server: Server, name: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": X.ravel().tolist()}]}
    return server.post(f"/v2/models/{name}/infer", json=body)


def answer(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 16)


def built_answer(artifacts: Path, name: str) -> np.ndarray:
    runtime = load_runtime(ArtifactStore(artifacts).current(name), device="cpu")
    return runtime.infer({"x": X})["y"]


def served(server: Server, name: str, expected: np.ndarray) -> bool:
    r = infer(server, name)
    return r.status_code == 200 and np.allclose(answer(r), expected, atol=1e-6)


def test_own_code_from_init_to_a_served_request_without_a_restart(tmp_path: Path) -> None:
    functions, artifacts = tmp_path / "functions", tmp_path / "artifacts"
    for name, framework in (("tagger", "torch"), ("scaler", "onnx")):
        made = slserve("init", name, "--framework", framework, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    server = start_server(functions, artifacts, tmp_path / "serve.log", break_at_serve="1")
    try:
        # Before its first build: no metadata promising what no request can get, and readiness says so.
        r = server.get("/v2/models/tagger")
        assert r.status_code == 503 and "tagger is not built: run `slserve build tagger`" in r.json()["error"]
        assert server.get("/v2/health/ready").json()["functions"]["tagger"] is False

        built = slserve("build", cwd=tmp_path)
        assert built.returncode == 0, built.stderr
        for name in ("tagger", "scaler"):
            expected = built_answer(artifacts, name)
            assert wait_for(lambda n=name, e=expected: served(server, n, e), 30), (tmp_path / "serve.log").read_text()
        assert server.get("/v2/models/tagger").status_code == 200

        # New code, rebuilt: the running gateway serves it.
        model = functions / "tagger/model.py"
        model.write_text(model.read_text().replace("torch.relu(self.layer(x))", "torch.relu(self.layer(x)) + 1.0"))
        assert slserve("build", "tagger", cwd=tmp_path).returncode == 0
        new = built_answer(artifacts, "tagger")
        assert wait_for(lambda: served(server, "tagger", new), 30), (tmp_path / "serve.log").read_text()
        assert float(new.min()) >= 1.0

        # Code that builds here but cannot load in the gateway: the build before it serves on, and the function's
        # status and the log name the real error.
        helper = functions / "tagger/checks.py"
        helper.write_text(
            "import os\n\nif os.environ.get('SLSERVE_BREAK_AT_SERVE'):\n"
            "    raise RuntimeError('this host lacks the model licence file')\n"
        )
        model.write_text("from . import checks  # noqa: F401\n" + model.read_text())
        assert slserve("build", "tagger", cwd=tmp_path).returncode == 0
        cause = "RuntimeError: this host lacks the model licence file (tagger/checks.py, line 4)"
        logged = (tmp_path / "serve.log").read_text
        assert wait_for(lambda: cause in str(server.status("tagger")["error"]), 30), logged()
        assert "the previous build keeps serving" in server.status("tagger")["error"]
        assert served(server, "tagger", new)
        assert cause in logged()

        # A fresh gateway has no previous build to fall back on: the request itself names the cause.
        server.stop()
        server = start_server(functions, artifacts, tmp_path / "serve2.log", break_at_serve="1")
        r = infer(server, "tagger")
        assert r.status_code == 503 and cause in r.json()["error"], r.text
        assert served(server, "scaler", built_answer(artifacts, "scaler"))  # the other function serves on
        assert server.proc.poll() is None
    finally:
        server.stop()
