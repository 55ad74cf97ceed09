"""`slserve deploy modal`: the Modal target from the command line (plan, app, costs, deploy)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from slserve.keepalive import GAPS_FILE, load_gaps
from slserve.remote.deploying import stop_unless_deployable
from slserve.settings import DEFAULT_ROUTES, DEFAULT_STATE
from slserve.terminal import make_console, print_table

console = make_console()


def deploy_modal(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and build the app offline; deploy nothing")] = False,
    functions: Annotated[Path, typer.Option("--functions", envvar="SLSERVE_FUNCTIONS")] = Path("functions"),
    artifacts: Annotated[Path, typer.Option("--artifacts", envvar="SLSERVE_ARTIFACTS")] = Path(".slserve/artifacts"),
    routes: Annotated[Path, typer.Option("--routes", envvar="SLSERVE_ROUTES")] = DEFAULT_ROUTES,
    only: Annotated[str | None, typer.Option("--only", help="Comma-separated functions (default: GPU, modal)")] = None,
    work: Annotated[Path, typer.Option("--work", help="Where the plan is written")] = Path(".slserve/modal"),
    prefix: Annotated[str, typer.Option("--prefix", help="The app's name and the endpoints' label prefix")] = "slserve",
    state: Annotated[
        Path, typer.Option("--state", envvar="SLSERVE_STATE", help="Where the local gateway recorded idle gaps")
    ] = DEFAULT_STATE,
) -> None:
    """Plan a Modal class per GPU function (and per function whose target is modal), build the app offline, and
    print each class's GPU, snapshots, scaling, what the volume must hold and the cost per million requests.
    Without --dry-run, also fill the volume, create the endpoints' secret and deploy (with a Modal token;
    otherwise it says what is missing)."""
    if importlib.util.find_spec("modal") is None:
        console.print("deploy modal needs the modal client: pip install 'slserve[modal]'")
        raise typer.Exit(2)
    from slserve.modal import deploy
    from slserve.modal.app import build_app
    from slserve.modal.plan import plan_app
    from slserve.platform.catalog import FolderCatalog
    from slserve.remote.costs import charged_per_million, measure_compute
    from slserve.snapshot import ArtifactStore

    store = ArtifactStore(artifacts)
    catalog = FolderCatalog(store, functions)
    chosen = deploy.selected(catalog, only.split(",") if only else None)
    plan = plan_app(store, chosen, prefix, load_gaps(state / GAPS_FILE))
    plan_file = plan.write(work / "modal-plan.json")
    build_app(plan, plan_file, "slserve.modal.container", {})  # Modal checks every class's settings as it builds
    console.print(f"planned {plan_file}; app {plan.app!r} built offline, a class per function: {len(plan.functions)}")

    table = Table(*("function", "class", "GPU", "snapshot", "containers", "scale-down s", "inputs"))
    table.box = box.SIMPLE_HEAD
    for f in plan.functions:
        snapshot = "memory + GPU" if f.gpu_snapshot else "memory"
        scaling = (f"{f.min_containers}..{f.max_containers}", str(f.scaledown_window), str(f.max_inputs))
        table.add_row(f.name, f.cls_name, f.gpu or "-", snapshot, *scaling)
    print_table(console, table)
    for f in plan.functions:
        console.print(f"  {f.name}: {f.snapshot}")
        console.print(f"  {f.name}: scale-down window {f.scaledown_window} s ({f.scaledown_basis})")
        size = sum(f.blobs.values())
        console.print(f"  {f.name}: volume {plan.volume} holds {len(f.blobs)} blobs, {size / 2**20:.1f} MB (sent once)")

    costs = Table(
        *("function", "compute ms", "on", "Modal $/M requests", "idle $/scale-down", "always-on $/month", "charged $/M")
    )
    costs.box = box.SIMPLE_HEAD
    for f in plan.functions:
        function = catalog.functions()[f.name]
        measured = measure_compute(store, function, None)  # on the GPU where this host has one
        charged = charged_per_million(function, routes)
        e = deploy.estimate(f, measured.compute_ms, measured.device, charged)
        console.print(f"  {f.name}: compute {measured.provenance}")
        costs.add_row(
            f.name,
            f"{e.compute_ms:.1f}",
            e.device,
            f"{e.modal_per_million:.2f}",
            f"{e.idle_per_scaledown:.4f}",
            f"{e.always_on_per_month:.2f}",
            f"{e.charged_per_million:.2f}",
        )
    console.print(costs)
    console.print(
        "Modal: the container's GPU, CPU and memory for the measured compute, one request per call (batching "
        "lowers it), list prices; a GPU function measured on this host's CPU is an upper bound. Charged: the "
        "tier's prices. A container idles through its scale-down window once per burst; always-on: the "
        "min_containers kept warm all month."
    )
    if dry_run:
        return
    stop_unless_deployable(console, deploy.missing_for_deploy())
    urls = deploy.deploy(plan, plan_file, store, console.print, DEFAULT_STATE / "modal-endpoint-secret")
    for name, url in urls.items():
        console.print(f"{name}: {url}")
    first = next(iter(plan.functions))
    template = re.sub(re.escape(first.label), "{label}", urls[first.name])
    console.print(f"give the gateways: SLSERVE_MODAL_URL={template}")
