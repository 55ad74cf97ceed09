"""Routing on a real server: aliases, sticky canaries, pinned versions, tiers with prices and fallback, live
route changes."""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import write_function
from tests.integration.server import Server, start_server
from tests.integration.test_platform import TINY, tiny_request, wait_for

from slserve.build.function import build_function
from slserve.snapshot import ArtifactStore
from slserve.spec import load_function

# (function, model, version, tier, factory, seed, scaling)
FUNCTIONS = [
    ("enc-v1", "enc", "1", "standard", "slserve_samples.big_mlp:build_small", 3, ""),
    (
        "enc-v1-eco",
        "enc",
        "1",
        "economy",
        "slserve_samples.faulty:build_slow",
        3,
        "max_instances = 1\ntarget_concurrency = 1\nqueue_size = 1",
    ),
    ("enc-v2", "enc", "2", "standard", "slserve_samples.big_mlp:build_small", 4, ""),
    ("dead-v1", "dead", "1", "standard", "slserve_samples.faulty:build_broken", 5, "max_instances = 1"),
    ("dead-v1-eco", "dead", "1", "economy", "slserve_samples.big_mlp:build_small", 5, ""),
]
ROUTES = """
[models.enc]
default = "stable"

[models.enc.aliases.stable]
version = "1"

[models.enc.aliases.canary]
split = { "1" = 90, "2" = 10 }

[models.enc.aliases.mirror]
version = "1"
shadow = { version = "2", percent = 100 }
"""


def spec(name: str, model: str, version: str, tier: str, factory: str, seed: int, scaling: str) -> str:
    text = TINY.format(name=model, factory=factory, scaling=scaling).replace("seed = 3", f"seed = {seed}")
    return f'tier = "{tier}"\n' + text.replace(f'name = "{model}"', f'name = "{model}"\nversion = "{version}"', 1)


@pytest.fixture(scope="module")
def routes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("routes") / "routes.toml"
    path.write_text(ROUTES)
    return path


@pytest.fixture(scope="module")
def functions_dir(sample_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    functions = tmp_path_factory.mktemp("functions")
    for row in FUNCTIONS:
        build_function(load_function(write_function(functions, row[0], spec(*row))), sample_store)
    return functions


@pytest.fixture(scope="module")
def server(sample_store: ArtifactStore, routes_file: Path, functions_dir: Path) -> Iterator[Server]:
    log = functions_dir.parent / "serve-routing.log"
    srv = start_server(functions_dir, sample_store.root, log, routes=str(routes_file))
    yield srv
    srv.stop()


def infer(server: Server, path: str, **headers: str) -> tuple[int, dict[str, str]]:
    r = server.post(path, json=tiny_request(), headers=headers)
    return r.status_code, dict(r.headers)


def test_the_default_alias_and_the_response_headers(server: Server) -> None:
    status, headers = infer(server, "/v2/models/enc/infer")
    assert status == 200
    assert headers["x-slserve-version"] == "1" and headers["x-slserve-alias"] == "stable"
    assert headers["x-slserve-tier"] == "standard" and headers["x-slserve-function"] == "enc-v1"
    assert int(headers["x-slserve-cost"]) >= 20  # standard: 20 per request + 2 per compute ms
    status, headers = infer(server, "/v2/models/enc/versions/2/infer")
    assert (status, headers["x-slserve-version"], headers["x-slserve-function"]) == (200, "2", "enc-v2")
    assert "x-slserve-alias" not in headers
    meta = server.get("/v2/models/enc").json()
    assert meta["name"] == "enc" and meta["versions"] == ["1", "2"]


def test_a_canary_is_sticky_per_key_and_splits_by_weight(server: Server) -> None:
    versions = [
        infer(server, "/v2/models/enc/versions/canary/infer", **{"x-slserve-routing-key": f"k{i}"})[1][
            "x-slserve-version"
        ]
        for i in range(200)
    ]
    assert 5 <= versions.count("2") <= 40, versions.count("2")  # 10% of 200, loosely: the exact split is a unit test
    for i in range(0, 200, 40):
        again = infer(server, "/v2/models/enc/versions/canary/infer", **{"x-slserve-routing-key": f"k{i}"})
        assert again[1]["x-slserve-version"] == versions[i]


def test_a_price_is_published_and_identical_requests_cost_the_same(server: Server) -> None:
    """The price depends on the request (its rows, tier, the function's weight), not on the compute it took:
    computed from the model's metadata before sending, it is what every identical request is charged."""
    published = server.get("/v2/models/enc").json()["price"]
    assert published["unit"] == "row" and published["tier"] == "standard"
    rows = 3
    expected = published["per_request"] + math.ceil(published["weight"] * rows * published["per_unit"])
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": [0.5] * 16 * rows}]}
    costs = {server.post("/v2/models/enc/infer", json=request).headers["x-slserve-cost"] for _ in range(10)}
    assert costs == {str(expected)}
    with sqlite3.connect(server.state / "ledger.sqlite") as db:
        kept = db.execute("SELECT price, compute_cost, compute_ms FROM records WHERE price = ?", (expected,)).fetchall()
    assert len(kept) >= 10 and all(cost is not None and cost >= 0 and ms > 0 for _, cost, ms in kept)


def test_tiers_have_their_own_functions_and_prices(server: Server) -> None:
    status, eco = infer(server, "/v2/models/enc/infer", **{"x-slserve-tier": "economy"})
    assert status == 200 and eco["x-slserve-function"] == "enc-v1-eco" and eco["x-slserve-tier"] == "economy"
    body = {**tiny_request(), "parameters": {"tier": "economy"}}
    assert server.post("/v2/models/enc/infer", json=body).headers["x-slserve-function"] == "enc-v1-eco"
    gold = server.post("/v2/models/enc/infer", json=tiny_request(), headers={"x-slserve-tier": "gold"})
    assert gold.status_code == 400 and "unknown tier 'gold'" in gold.json()["error"]


def test_a_saturated_economy_tier_says_429_instead_of_upgrading(server: Server) -> None:
    url = server.url + "/v2/models/enc/infer"

    async def burst(headers: dict[str, str]) -> list[tuple[int, str]]:
        import httpx

        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(
                *(client.post(url, json=tiny_request(), headers={**server.auth, **headers}) for _ in range(8))
            )
        return [(r.status_code, r.headers.get("x-slserve-function", "")) for r in rs]

    plain = asyncio.run(burst({"x-slserve-tier": "economy"}))
    assert {c for c, _ in plain} == {200, 429} and all(f in ("", "enc-v1-eco") for _, f in plain), plain
    upgraded = asyncio.run(burst({"x-slserve-tier": "economy", "x-slserve-allow-upgrade": "true"}))
    assert all(c == 200 for c, _ in upgraded), upgraded
    assert {f for _, f in upgraded} == {"enc-v1-eco", "enc-v1"}


def test_a_dead_function_falls_back_to_a_cheaper_tier(server: Server) -> None:
    status, headers = infer(server, "/v2/models/dead/infer")
    assert status == 200, headers
    assert headers["x-slserve-function"] == "dead-v1-eco" and headers["x-slserve-tier"] == "economy"
    assert headers["x-slserve-fallback"] == "dead-v1->dead-v1-eco"


def test_a_shadow_never_changes_the_answer_and_its_comparison_is_reported(server: Server) -> None:
    primary = server.post("/v2/models/enc/versions/1/infer", json=tiny_request()).json()["outputs"]
    for _ in range(10):
        r = server.post("/v2/models/enc/versions/mirror/infer", json=tiny_request())
        assert r.status_code == 200 and r.headers["x-slserve-function"] == "enc-v1"
        assert r.json()["outputs"] == primary

    def stats() -> dict[str, object]:
        shadows = server.get("/slserve/routes").json()["shadows"]
        return next((s for s in shadows if s["alias"] == "mirror"), {"requests": 0})

    assert wait_for(lambda: stats()["requests"] == 10, timeout=10), stats()
    got = stats()
    assert got["shadow_version"] == "2" and got["failures"] == 0
    assert got["max_abs_diff"] > 0 and got["mean_cosine"] is not None  # v2 has other weights: it does differ


def test_route_changes_apply_live_and_bad_ones_are_refused(server: Server, routes_file: Path) -> None:
    async def load_while_changing() -> tuple[list[int], list[str]]:
        """Four clients back to back; the routes change once 20 have been answered, and the load goes on until
        20 have come back from the new version (or 3,000 were sent)."""
        statuses: list[int] = []
        versions: list[str] = []
        async with httpx.AsyncClient(timeout=60, headers=server.auth) as client:

            async def one_client() -> None:
                while versions.count("2") < 20 and len(statuses) < 3000:
                    r = await client.post(server.url + "/v2/models/enc/infer", json=tiny_request())
                    statuses.append(r.status_code)
                    versions.append(r.headers.get("x-slserve-version", ""))
                    if len(statuses) == 20:
                        routes_file.write_text(ROUTES.replace('version = "1"', 'version = "2"'))

            await asyncio.gather(*(one_client() for _ in range(4)))
        return statuses, versions

    routes_file.write_text(ROUTES)  # as this module's server started with: v1 stable (whatever ran before)
    assert wait_for(lambda: infer(server, "/v2/models/enc/infer")[1]["x-slserve-version"] == "1", timeout=10)
    statuses, versions = asyncio.run(load_while_changing())
    assert set(statuses) == {200}  # no request fails while the routes change
    assert versions[:20] == ["1"] * 20 and versions.count("2") >= 20, versions  # it changed under load
    assert wait_for(lambda: infer(server, "/v2/models/enc/infer")[1]["x-slserve-version"] == "2", timeout=10)
    routes_file.write_text(ROUTES.replace('"2" = 10', '"2" = 20'))
    assert wait_for(lambda: server.get("/slserve/routes").json()["error"] is not None, timeout=10)
    assert "sum to 110" in server.get("/slserve/routes").json()["error"]
    assert infer(server, "/v2/models/enc/infer")[1]["x-slserve-version"] == "2"  # the old routes stay in force


def slserve(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from slserve.cli import main; main()"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def test_route_commands_edit_the_live_routes(server: Server, routes_file: Path, functions_dir: Path) -> None:
    where = ["--routes", str(routes_file), "--functions", str(functions_dir)]
    routes_file.write_text(ROUTES)  # its own routes, whatever the tests before left behind
    assert wait_for(lambda: server.get("/slserve/routes").json()["error"] is None, timeout=10)
    before = routes_file.read_text()
    bad = slserve("route", "set", "enc", "canary", "1=90", "2=20", *where)
    assert bad.returncode == 2 and "sum to 100" in bad.stderr and routes_file.read_text() == before
    unknown = slserve("route", "set", "enc", "canary", "1=90", "3=10", *where)
    assert unknown.returncode == 2 and "unknown version(s) ['3']" in unknown.stderr

    assert slserve("route", "set", "enc", "stable", "1", *where).returncode == 0
    assert wait_for(lambda: infer(server, "/v2/models/enc/infer")[1]["x-slserve-version"] == "1", timeout=10)
    assert slserve("route", "set", "enc", "stable", "1=50", "2=50", *where).returncode == 0
    promoted = slserve("route", "promote", "enc", "stable", *where)
    assert promoted.returncode == 0 and "-> 2" in promoted.stdout
    assert wait_for(lambda: infer(server, "/v2/models/enc/infer")[1]["x-slserve-version"] == "2", timeout=10)
    assert slserve("route", "rollback", *where).returncode == 0  # back to the 50/50 split
    assert wait_for(
        lambda: (
            server.get("/slserve/routes").json()["models"]["enc"]["aliases"]["stable"]["split"] == {"1": 50, "2": 50}
        ),
        timeout=10,
    )
    shown = slserve("route", "show", "--url", server.url, "--key", server.key)
    assert shown.returncode == 0 and "mirror" in shown.stdout and "stable" in shown.stdout
