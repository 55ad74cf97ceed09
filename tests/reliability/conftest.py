"""One server for the reliability tests (the fast tier starts no other): tiny functions that can be made to
crash, raise, sleep or hog memory, and a tiny text model over MiniLM's tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import write_function
from tests.integration.server import Server, start_server
from tests.reliability.hazards import FUNCTIONS, TIMEOUT_S

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function


@pytest.fixture(scope="session")
def hazard_functions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArtifactStore]:
    root = tmp_path_factory.mktemp("hazards")
    store = ArtifactStore(root / "artifacts")
    for name, toml in FUNCTIONS.items():
        build_function(load_function(write_function(root / "functions", name, toml)), store)
    return root / "functions", store


@pytest.fixture(scope="session")
def server(hazard_functions: tuple[Path, ArtifactStore]) -> Iterator[Server]:
    functions, store = hazard_functions
    srv = start_server(
        functions,
        store.root,
        functions.parent / "serve.log",
        request_timeout_s=str(TIMEOUT_S),
        max_tensor_elements="100000",
    )
    yield srv
    srv.stop()
