"""`slserve route`: model versions, aliases, canaries and shadows, written to routes.toml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from slserve.cli.common import (
    DEFAULT_FUNCTIONS,
    ApiKey,
    AsJson,
    FunctionsDir,
    GatewayUrl,
    StateDir,
    console,
    get_json,
)
from slserve.errors import SlserveError
from slserve.settings import DEFAULT_ROUTES, DEFAULT_STATE
from slserve.spec import discover_functions
from slserve.terminal import print_table

if TYPE_CHECKING:
    from slserve.router.edit import RoutesFile

app = typer.Typer(no_args_is_help=True, help="Model versions, aliases, canaries and shadows (routes.toml)")
RoutesPath = Annotated[Path, typer.Option("--routes", envvar="SLSERVE_ROUTES", help="Routes file")]


def _routes_file(routes: Path, functions: Path) -> RoutesFile:
    from slserve.compose.spec import discover_pipelines
    from slserve.router.edit import RoutesFile

    return RoutesFile(routes, [*discover_functions(functions), *discover_pipelines(functions)])


@app.command("set")
def route_set(
    model: str,
    alias: str,
    targets: Annotated[list[str], typer.Argument(help="VERSION, or a split: 1=90 2=10")],
    routes: RoutesPath = DEFAULT_ROUTES,
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
) -> None:
    """Point ALIAS at one version (or alias), or split it by weight (a canary, sticky per caller)."""
    _routes_file(routes, functions).set_alias(model, alias, targets)
    console.print(f"{model}:{alias} -> {' '.join(targets)} (written to {routes}; a running gateway picks it up)")


@app.command("shadow")
def route_shadow(
    model: str,
    alias: str,
    version: Annotated[str | None, typer.Argument(help="Version to shadow to (omit with --off)")] = None,
    percent: Annotated[float, typer.Option(help="Share of the alias's traffic copied")] = 100.0,
    off: Annotated[bool, typer.Option("--off", help="Stop shadowing")] = False,
    routes: RoutesPath = DEFAULT_ROUTES,
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
) -> None:
    """Copy a share of ALIAS's traffic to VERSION and compare the answers (`slserve route show`)."""
    if not off and version is None:
        raise SlserveError("name the version to shadow to, or pass --off")
    _routes_file(routes, functions).set_shadow(model, alias, None if off else version, percent)
    console.print(f"{model}:{alias} shadow " + ("off" if off else f"-> {version} at {percent:g}%"))


@app.command("promote")
def route_promote(
    model: str, alias: str, routes: RoutesPath = DEFAULT_ROUTES, functions: FunctionsDir = DEFAULT_FUNCTIONS
) -> None:
    """Finish a canary: ALIAS becomes 100% the newest version of its split."""
    _, newest = _routes_file(routes, functions).promote(model, alias)
    console.print(f"{model}:{alias} -> {newest}")


@app.command("rollback")
def route_rollback(routes: RoutesPath = DEFAULT_ROUTES, functions: FunctionsDir = DEFAULT_FUNCTIONS) -> None:
    """Put the routes back as they were before the last change."""
    _routes_file(routes, functions).rollback()
    console.print(f"{routes} restored to its previous version")


@app.command("show")
def route_show(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """The routes a running gateway serves, and how its shadows compare."""
    doc = get_json("/slserve/routes", url, key, state)
    if as_json:
        console.print_json(data=doc)
        return
    if doc["error"]:
        refused = f"{escape(doc['routes_file'])} was refused"
        console.print(f"[red]{refused}[/]: {escape(doc['error'])} (the routes below stay in force)")
    table = Table("model", "alias", "versions", "shadow", box=box.SIMPLE_HEAD)
    for model, m in doc["models"].items():
        for alias, a in m["aliases"].items():
            split = " ".join(f"{v}={w}" for v, w in a["split"].items())
            shadow = f"{a['shadow']['version']} at {a['shadow']['percent']:g}%" if a["shadow"] else ""
            table.add_row(model, alias + (" (default)" if alias == m["default"] else ""), split, shadow)
    print_table(console, table)
    if doc["shadows"]:
        stats = Table(
            "model",
            "alias",
            "shadow",
            "requests",
            "failures",
            "max abs diff",
            "mean cosine",
            "argmax agree",
            box=box.SIMPLE_HEAD,
        )
        for s in doc["shadows"]:
            cos = "" if s["mean_cosine"] is None else f"{s['mean_cosine']:.6f}"
            agree = "" if s["argmax_agreement"] is None else f"{s['argmax_agreement']:.1%}"
            stats.add_row(
                s["model"],
                s["alias"],
                s["shadow_version"],
                str(s["requests"]),
                str(s["failures"]),
                f"{s['max_abs_diff']:.3g}",
                cos,
                agree,
            )
        print_table(console, stats)
