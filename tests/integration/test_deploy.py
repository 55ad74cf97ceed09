"""Deploying into a running gateway: a new build is served without a restart, and without failing a request."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from tests.conftest import write_function
from tests.integration.server import Server, start_server
from tests.integration.test_platform import TINY, tiny_request, wait_for

from slserve.build.function import build_function
from slserve.runtime import load_runtime
from slserve.snapshot import Artifact, ArtifactStore
from slserve.spec import load_function


def tiny(name: str, seed: int) -> str:
    return TINY.format(name=name, factory="slserve_samples.big_mlp:build_small", scaling="max_instances = 2").replace(
        "seed = 3", f"seed = {seed}"
    )


def build(functions: Path, store: ArtifactStore, name: str, seed: int) -> Artifact:
    return build_function(load_function(write_function(functions, name, tiny(name, seed))), store).artifact


def expected(artifact: Artifact) -> np.ndarray:
    x = np.asarray(tiny_request()["inputs"][0]["data"], dtype=np.float32).reshape(1, 16)
    return load_runtime(artifact, device="cpu").infer({"x": x})["y"]


def answer(server: Server, name: str) -> httpx.Response:
    return server.post(f"/v2/models/{name}/infer", json=tiny_request())


def output(r: httpx.Response) -> np.ndarray:
    return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 16)


def test_builds_deploy_into_a_running_gateway(tmp_path: Path) -> None:
    functions, store = tmp_path / "functions", ArtifactStore(tmp_path / "artifacts")
    first = build(functions, store, "alpha", seed=1)
    server = start_server(functions, store.root, tmp_path / "serve.log")
    try:
        r = answer(server, "alpha")
        assert r.status_code == 200 and np.array_equal(output(r), expected(first))
        assert answer(server, "beta").status_code == 404

        # A new function: served once built, no restart.
        beta = build(functions, store, "beta", seed=2)
        assert wait_for(lambda: answer(server, "beta").status_code == 200, 15)
        assert np.array_equal(output(answer(server, "beta")), expected(beta))

        # An edit that is not rebuilt changes nothing: the last build keeps serving.
        spec = functions / "alpha" / "function.toml"
        spec.write_text(spec.read_text().replace("seed = 1", "seed = 5"))
        threading.Event().wait(2.5)
        assert np.array_equal(output(answer(server, "alpha")), expected(first))

        # A rebuild under load: every request is answered, first by the old build, then by the new one, and
        # none waits for a cold start (the old instance serves until its replacement is ready).
        streamed: list[httpx.Response] = []
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                streamed.append(answer(server, "alpha"))

        loader = threading.Thread(target=stream)
        loader.start()
        polled: list[httpx.Response] = []  # until the new build answers: the first of its answers is among these
        try:
            second = build_function(load_function(functions / "alpha"), store).artifact
            assert second.digest != first.digest
            deadline = time.monotonic() + 20
            while not (polled and np.array_equal(output(polled[-1]), expected(second))):
                assert time.monotonic() < deadline, "the rebuild was not deployed within 20 s"
                polled.append(answer(server, "alpha"))
        finally:
            stop.set()
            loader.join()
        responses = streamed + polled
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
        assert not [r.headers["x-slserve-cold-start-ms"] for r in responses if "x-slserve-cold-start-ms" in r.headers]
        builds = [0 if np.array_equal(output(r), expected(first)) else 1 for r in streamed]
        assert builds == sorted(builds), builds  # old, then new, never back
        assert wait_for(lambda: len(server.status("alpha")["instances"]) == 1, 15)  # the old instance stopped
        assert server.status("alpha")["instances"][0]["artifact"] == second.digest[:12]

        # A build the running template lacks is loaded after the fork until the template is renewed; from
        # then on the new function's instances fork with it preloaded (a fast cold start, as at startup).
        build(functions, store, "delta", seed=4)
        assert wait_for(lambda: "preloads alpha, beta, delta" in server.log.read_text(), 60), server.log.read_text()
        assert answer(server, "delta").status_code == 200
        assert [i["preloaded"] for i in server.status("delta")["instances"]] == [True]

        # A broken spec in the folder is reported and changes nothing.
        (functions / "gamma").mkdir()
        (functions / "gamma" / "function.toml").write_text("[model\nname = ")
        assert wait_for(lambda: "functions not reloaded" in server.log.read_text(), 15)
        assert answer(server, "alpha").status_code == 200
        shutil.rmtree(functions / "gamma")

        # A deleted function drains away.
        shutil.rmtree(functions / "beta")
        assert wait_for(lambda: answer(server, "beta").status_code == 404, 15)
        assert answer(server, "alpha").status_code == 200
    finally:
        server.stop()
    log = server.log.read_text()
    assert "function beta now serves" in log and "function alpha now serves" in log and "Traceback" not in log, log
