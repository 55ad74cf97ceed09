"""A restarted gateway serves each function as soon as its own build is preloaded: a torch function whose model
code imports slowly holds back no other torch function (they share the template process)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.server import start_server
from tests.integration.test_own_code import infer
from tests.integration.test_platform import wait_for
from tests.unit.test_function_code import OWN_TOML

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

SLOW_IMPORT_S = 6.0


def test_a_slow_import_holds_back_only_its_own_function(tmp_path: Path) -> None:
    functions, store = tmp_path / "functions", ArtifactStore(tmp_path / "artifacts")
    for name in ("quick", "slow"):
        d = functions / name
        d.mkdir(parents=True)
        (d / "function.toml").write_text(OWN_TOML.format(name=name).replace("[-1, 4]", "[-1, 16]"))
        (d / "model.py").write_text(
            "import os\nimport time\n\nimport torch\n\n"
            f"if os.environ.get('SLSERVE_SLOW_IMPORTS') and {name == 'slow'}:\n    time.sleep({SLOW_IMPORT_S})\n\n\n"
            "def build_model() -> torch.nn.Module:\n    return torch.nn.Linear(16, 16)\n"
        )
        build_function(load_function(d), store)
    started = time.monotonic()
    # Readiness as a whole waits for every build; each function is ready (and served) on its own.
    server = start_server(functions, store.root, tmp_path / "serve.log", slow_imports="1")
    try:
        assert time.monotonic() - started >= SLOW_IMPORT_S  # the gateway's readiness waited for the slow one
        server.stop()
        live = "/v2/health/live"
        server = start_server(functions, store.root, tmp_path / "serve2.log", slow_imports="1", ready_path=live)
        assert wait_for(lambda: infer(server, "quick").status_code == 200, 30)
        # quick answered while slow still imports: it did not wait behind it (an order, not a wall-clock bound)
        assert server.status("quick")["ready"] is True and server.status("slow")["ready"] is False
        assert wait_for(lambda: infer(server, "slow").status_code == 200, 30)
    finally:
        server.stop()
