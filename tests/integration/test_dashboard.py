"""The dashboard in a real browser (Debian's chromium, driven by Playwright; nothing downloaded): after real
traffic, every number it shows matches the gateway's own JSON, and a screenshot is kept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import FUNCTIONS, ROOT
from tests.integration.server import Server, start_server
from tests.integration.test_platform import wait_for

from slserve.accounts.keys import new_key
from slserve.build.function import build_function
from slserve.router.edit import RoutesFile
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions, load_function

CHROMIUM = shutil.which("chromium")
SCREENSHOT = ROOT / "benchmarks/out/dashboard.png"
BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [3, 3, 0, 0]}]}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (`make browser` installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dashboard")
    functions, store = root / "functions", ArtifactStore(root / "artifacts")
    for name in ("classifier", "classifier-v2"):
        shutil.copytree(FUNCTIONS / name, functions / name)
        build_function(load_function(functions / name), store)
    routes = root / "routes.toml"
    edit = RoutesFile(routes, discover_functions(functions))
    edit.set_alias("classifier", "canary", ["1=90", "2=10"])
    edit.set_alias("classifier", "stable", ["1"])
    edit.set_shadow("classifier", "stable", "2", 100.0)
    server = start_server(functions, store.root, root / "serve.log", routes=str(routes))
    yield server
    server.stop()


def drive_traffic(server: Server) -> None:
    tenant = server.keys().create(new_key("acme"))
    for i in range(12):
        sticky = {"x-slserve-routing-key": str(i)}
        r = server.post("/v2/models/classifier/versions/canary/infer", json=BODY, headers=sticky)
        assert r.status_code == 200, r.text
    for _ in range(5):
        r = server.post(
            "/v2/models/classifier/versions/stable/infer", json=BODY, headers={"Authorization": f"Bearer {tenant}"}
        )
        assert r.status_code == 200, r.text
    bad = server.post("/v2/models/classifier/infer", json={"inputs": [{"name": "features"}]})
    assert bad.status_code == 400


def shown(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text()).strip()


def keep_alive(k: dict[str, Any] | None) -> str:
    if k is None:
        return "\u2013"  # the page's dash
    prewarm = k["prewarm_s"]
    when = f"{k['keep_s']:g} s" if prewarm is None else f"pre-warm after {prewarm:g} s, keep {k['keep_s']:g} s"
    return f"{when} ({k['basis']})"


def expected(doc: dict[str, Any]) -> dict[str, str]:
    """What the page must show, from the JSON, by test id."""
    want = {"card-functions": str(len(doc["functions"])), "card-charged": doc["money"]["total"]["charged"]}
    for f in doc["functions"]:
        name = f["name"]
        want[f"served-{name}"] = f"{f['served']:,}"
        want[f"cold-{name}"] = f"{f['cold_starts']:,}"
        want[f"queued-{name}"] = f"{f['queued']:,}"
        want[f"failed-{name}"] = f"{f['failed']:,}"
        k = f["keep_alive"]
        when = (
            f"{k['keep_s']:g} s"
            if k["prewarm_s"] is None
            else f"pre-warm after {k['prewarm_s']:g} s, keep {k['keep_s']:g} s"
        )
        want[f"keepalive-{name}"] = f"{when} ({k['basis']})"
    for row in doc["money"]["by_tier"]:
        want[f"tier-charged-{row['tier']}"] = row["charged"]
        want[f"tier-requests-{row['tier']}"] = f"{row['requests']:,}"
    for row in doc["money"]["by_tenant"]:
        want[f"tenant-charged-{row['tenant']}"] = row["charged"]
        want[f"tenant-requests-{row['tenant']}"] = f"{row['requests']:,}"
    for s in doc["routes"]["shadows"]:
        want[f"shadow-{s['model']}-{s['alias']}"] = f"{s['requests']:,}"
    for d in doc["drift"]:
        want[f"drift-rows-{d['model']}-{d['version']}"] = f"{d['rows']:,}"
        want[f"drift-{d['model']}-{d['version']}"] = d["state"]
    return want


def launch(playwright: Any) -> Any:
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)


def test_the_dashboard_shows_what_the_gateway_says(server: Server, tmp_path: Path) -> None:
    drive_traffic(server)
    # The ledger has every record and the shadow comparisons are in before the page is compared.
    assert wait_for(lambda: server.get("/slserve/overview").json()["money"]["total"]["requests"] >= 17, 20)
    assert wait_for(lambda: server.get("/slserve/routes").json()["shadows"][0]["requests"] >= 5, 20)

    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{server.url}/dashboard#key={server.key}")
            page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
            assert "#key" not in page.url  # the key left the address bar (kept in the tab's session storage)

            def matches() -> bool:
                want = expected(server.get("/slserve/overview").json())
                return all(shown(page, testid) == value for testid, value in want.items())

            assert wait_for(matches, 20), {
                k: (shown(page, k), v) for k, v in expected(server.get("/slserve/overview").json()).items()
            }
            doc = server.get("/slserve/overview").json()
            split = shown(page, "split-classifier-canary")
            assert "v1 90%" in split and "v2 10%" in split
            assert doc["recent"]["classifier"]["requests"] >= 12
            assert shown(page, "rps-classifier") == f"{doc['recent']['classifier']['rps']:,.2f}"
            assert page.locator("#charts svg").count() >= 3  # instances, traffic and latency per function
            assert shown(page, "tenant-requests-acme") == "5"
            assert shown(page, "drift-classifier-1") == "too few rows"  # 100 rows are scored, fewer are noise
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000

            # Without a key the page asks for one; the JSON behind it is for admin keys only.
            fresh = browser.new_page()
            fresh.goto(f"{server.url}/dashboard")
            fresh.wait_for_selector("#login:not([hidden])", timeout=10_000)
        finally:
            browser.close()
    tenant = server.keys().create(new_key("someone"))
    r = server.get("/slserve/overview", headers={"Authorization": f"Bearer {tenant}"})
    assert r.status_code == 403
