"""The gateway: serve it, and ask the running one how it stands (status, dashboard, drift)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from slserve.cli.common import (
    DEFAULT_URL,
    ApiKey,
    AsJson,
    GatewayUrl,
    StateDir,
    console,
    dev_key,
    get_json,
)
from slserve.errors import SlserveError
from slserve.settings import DEFAULT_ROUTES, DEFAULT_STATE
from slserve.terminal import print_table


def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8080)")] = None,
    functions: Annotated[Path | None, typer.Option(help="Functions folder (default functions/)")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="Artifact store (default .slserve/artifacts)")] = None,
    config: Annotated[Path | None, typer.Option(help="Config file (default slserve.toml if present)")] = None,
    routes: Annotated[
        Path | None, typer.Option(help=f"Routes file (default {DEFAULT_ROUTES}; reloaded on change)")
    ] = None,
    state: Annotated[
        Path | None, typer.Option(help=f"Keys, ledger and server secret folder (default {DEFAULT_STATE})")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Front processes sharing the port and one platform (default 1)")
    ] = None,
) -> None:
    """Run the gateway with every function behind it, each at zero instances until called."""
    from slserve.settings import load_settings

    if config is not None:
        if not config.is_file():
            raise SlserveError(f"config file {config} not found")
        os.environ["SLSERVE_CONFIG"] = str(config)
    settings = load_settings(
        host=host, port=port, functions=functions, artifacts=artifacts, routes=routes, state=state, workers=workers
    )
    from slserve.accounts.keys import SQLiteKeyStore, ensure_dev_key
    from slserve.gateway.address import client_url

    dev = ensure_dev_key(SQLiteKeyStore(settings.state), settings.state)
    dashboard = f"{client_url(settings.host, settings.port)}/dashboard"
    if dev is not None:
        token, made = dev
        where = settings.state / "dev-key"
        if made:
            console.print(f"development API key (admin; saved in {where}):\n  {token}")
        else:
            console.print(f"development API key: see {where}")
        dashboard += f"#key={token}"
    console.print(f"dashboard (live, once the gateway is up): {dashboard}", highlight=False, soft_wrap=True)
    if settings.workers > 1:
        from slserve.workers import Supervisor

        Supervisor(settings).run()
    else:
        from slserve.server import serve as run_server

        run_server(settings)


def status(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Show each function's instances (starting, idle, busy), queue depth and cold starts."""
    doc = get_json("/slserve/functions", url, key, state)
    if as_json:
        console.print_json(data=doc)
        return
    table = Table(box=box.SIMPLE_HEAD)
    columns = ("function", "ver", "tier", "instances", "queued", "in flight", "cold starts", "served", "memory MB")
    for column in (*columns, "keep-alive"):
        table.add_column(
            column, justify="left" if column in ("function", "tier", "instances", "keep-alive") else "right"
        )
    for f in doc["functions"]:
        states: dict[str, int] = {}
        for inst in f["instances"]:
            states[inst["state"]] = states.get(inst["state"], 0) + 1
        shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "0"
        counts = (f["queued"], f["in_flight"], f["cold_starts"], f["served"])
        memory = "" if f.get("memory_mb") is None else f"{f['memory_mb']:.0f}"
        table.add_row(f["name"], f["version"], f["tier"], shown, *map(str, counts), memory, _keep_alive(f))
    print_table(console, table)
    memory_budget = (doc.get("host") or {}).get("memory")
    if memory_budget:
        m = memory_budget
        console.print(
            f"memory: {m['used_mb']} MB held of a {m['budget_mb']} MB budget (peak {m['peak_mb']} MB); "
            f"{m['evictions']} idle instances stopped to make room, {m['refused']} starts refused"
        )
    for f in doc["functions"]:
        if f["error"]:
            console.print(f"[red]{escape(f['name'])}[/]: {escape(f['error'])}")


def _keep_alive(function: dict[str, Any]) -> str:
    """A function's keep-alive as `status` shows it: `12.5 s (learned: ...)`, or a pre-warm's timing."""
    policy = function.get("keep_alive")
    if not policy:
        return ""
    if policy["prewarm_s"] is not None:
        return f"pre-warm after {policy['prewarm_s']:g} s, keep {policy['keep_s']:g} s ({policy['basis']})"
    return f"{policy['keep_s']:g} s ({policy['basis']})"


def dashboard(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """The running gateway's dashboard: a link to open (carrying the admin key in its fragment, which the page
    keeps in its tab and never sends anywhere but the gateway), or with --json what the page shows."""
    from slserve.gateway import address

    doc = get_json("/slserve/overview", url, key, state)  # checks the gateway is there and the key opens it
    if as_json:
        console.print_json(data=doc)
        return
    base = (url or address.find(state) or DEFAULT_URL).rstrip("/")
    token = key if key is not None else dev_key(state)
    console.print(f"{base}/dashboard" + (f"#key={token}" if token else ""), highlight=False, soft_wrap=True)


def drift(
    model: Annotated[str, typer.Argument(help="A model (or pipeline) name")],
    pin: Annotated[bool, typer.Option("--pin", help="Make the live window the version's reference")] = False,
    version: Annotated[str | None, typer.Option(help="--pin: the version (default: the model's default route)")] = None,
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """How far each version's live traffic has drifted from its reference (the build's calibration profile, or
    a pinned window), score by score, with the model's shadow comparisons."""
    if pin:
        pinned = get_json("/slserve/drift/pin", url, key, state, post={"model": model, "version": version})
        console.print(
            f"{model} version {pinned['version']}: reference pinned from {pinned['reference_rows']} live rows",
            highlight=False,
        )
        return
    doc = get_json(f"/slserve/drift?model={model}", url, key, state)
    if as_json:
        console.print_json(data=doc)
        return
    table = Table(
        "version", "state", "rows", "reference", "tensor", "measure", "score", "threshold", box=box.SIMPLE_HEAD
    )
    for v in doc["versions"]:
        reference = f"{v['reference']} ({v['reference_rows']} rows)" if v["reference"] else "-"
        head = (v["version"], v["state"], str(v["rows"]), reference)
        if not v["scores"]:
            table.add_row(*head, "", "", "", "")
        for i, s in enumerate(v["scores"]):
            style = "red" if s["drifting"] else None
            cells = (s["tensor"], s["measure"], f"{s['value']:.4f}", f"{s['threshold']:g}")
            table.add_row(*(head if i == 0 else ("", "", "", "")), *cells, style=style)
    console.print(f"drift of {model} over the last {doc['window_s']:g} s", highlight=False)
    print_table(console, table)
    for s in doc["shadows"]:
        console.print(
            f"shadow {s['model']}:{s['alias']} -> version {s['shadow_version']}: {s['requests']} compared, "
            f"mean cosine {s['mean_cosine']}, argmax agreement {s['argmax_agreement']}",
            highlight=False,
        )
