"""Preloads follow use: after a restart, a family's template preloads the builds its record saw called, a
build called for the first time is mapped after the fork (and answers), and its call renews the template to
preload it too, so its next cold start forks ready."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SMALL_MLP_TOML, write_function
from tests.integration.server import start_server
from tests.integration.test_platform import wait_for

from slserve.build.function import build_function
from slserve.keepalive import GAPS_FILE
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def test_a_template_preloads_what_is_called(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    for seed, name in enumerate(("used", "rare")):
        toml = SMALL_MLP_TOML.format(version="1", seed=seed).replace('name = "small-mlp"', f'name = "{name}"')
        toml += "\n[scaling]\nidle_seconds = 1\n"
        build_function(load_function(write_function(tmp_path / "functions", name, toml)), store)
    state = tmp_path / "state"
    state.mkdir()
    (state / GAPS_FILE).write_text(json.dumps({"used": [3.0, 4.0]}))  # the last run saw `used` called, not `rare`
    server = start_server(tmp_path / "functions", store.root, tmp_path / "serve.log", state=state)
    try:

        def first_instance(name: str) -> dict[str, object]:
            assert server.post(f"/v2/models/{name}/infer", json=BODY).status_code == 200
            status = {f["name"]: f for f in server.get("/slserve/functions").json()["functions"]}
            return status[name]["instances"][0]

        assert first_instance("used")["preloaded"] is True
        assert first_instance("rare")["preloaded"] is False  # mapped on demand: it answers all the same
        assert wait_for(lambda: "preloads rare, used" in server.log.read_text(), 60), server.log.read_text()[-2000:]

        def at_zero() -> bool:
            status = {f["name"]: f for f in server.get("/slserve/functions").json()["functions"]}
            return not status["rare"]["instances"]

        assert wait_for(at_zero, 30)
        assert first_instance("rare")["preloaded"] is True  # forked from the renewed template, ready
    finally:
        server.stop()
