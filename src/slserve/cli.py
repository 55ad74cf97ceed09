"""`slserve ...`: build, inspect, verify and invoke functions; serve them behind the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich import box
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from slserve.aws.cli import deploy_aws
from slserve.errors import BuildError, GatewayUnreachable, SlserveError, error_from_wire
from slserve.modal.cli import deploy_modal
from slserve.settings import DEFAULT_ROUTES, DEFAULT_STATE
from slserve.snapshot import ArtifactStore
from slserve.spec import SPEC_FILENAME, FunctionDef, discover_functions, load_function
from slserve.terminal import make_console, print_table

if TYPE_CHECKING:
    from slserve.router.edit import RoutesFile

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = make_console()
err_console = make_console(stderr=True)

FunctionsDir = Annotated[
    Path, typer.Option("--functions", envvar="SLSERVE_FUNCTIONS", help="Folder with one folder per function")
]
ArtifactsDir = Annotated[
    Path, typer.Option("--artifacts", envvar="SLSERVE_ARTIFACTS", help="Artifact store (blobs, refs, builds)")
]
GatewayUrl = Annotated[
    str | None,
    typer.Option(envvar="SLSERVE_URL", help="Gateway address (default: the one serving --state, else :8080)"),
]
ApiKey = Annotated[
    str | None, typer.Option("--key", envvar="SLSERVE_API_KEY", help="An admin API key (default: the dev key)")
]
StateDir = Annotated[
    Path, typer.Option("--state", envvar="SLSERVE_STATE", help="Keys, ledger and server secret folder")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON")]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_FUNCTIONS = Path("functions")
DEFAULT_ARTIFACTS = Path(".slserve/artifacts")


def _store(artifacts: Path) -> ArtifactStore:
    return ArtifactStore(artifacts)


def _select(functions: Path, names: list[str] | None) -> list[FunctionDef]:
    if names:
        return [load_function(functions / n) for n in names]
    found = discover_functions(functions)
    if not found:
        raise SlserveError(f"{functions}: no function folders with a {SPEC_FILENAME}; try `slserve init NAME`")
    return found


def _build_pipelines(functions: Path, names: list[str] | None, store: ArtifactStore) -> int:
    """Check and publish pipelines (all, or those named); returns how many failed (each said)."""
    from slserve.compose.catalog import build_pipeline
    from slserve.compose.spec import discover_pipelines, load_pipeline

    selected = [load_pipeline(functions / n) for n in names] if names else discover_pipelines(functions)
    failed = 0
    for pdef in selected:
        try:
            digest = build_pipeline(pdef, discover_functions(functions), store)
        except SlserveError as e:
            err_console.print(f"[red]{escape(pdef.name)}[/]: {escape(e.message)}")
            failed += 1
            continue
        steps = len(pdef.spec.steps)
        console.print(f"{pdef.name}: pipeline of {steps} steps checked and published ({digest[:12]})", highlight=False)
    return failed


@app.command()
def build(
    names: Annotated[list[str] | None, typer.Argument(help="Functions to build (default: all)")] = None,
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    force: Annotated[bool, typer.Option(help="Rebuild even when nothing changed")] = False,
    jobs: Annotated[int | None, typer.Option(help="Functions built at once (default: one per core)")] = None,
) -> None:
    """Turn functions into immutable, content-addressed artifacts. Unchanged functions are no-ops."""
    from slserve.build.parallel import build_all
    from slserve.compose.spec import PIPELINE_FILENAME
    from slserve.host import cores

    # Pipelines are checked after the functions (against the functions' specs, so a function need not be built).
    pipelines = [n for n in names or [] if (functions / n / PIPELINE_FILENAME).is_file()]
    if names and len(pipelines) == len(names):
        if _build_pipelines(functions, pipelines, _store(artifacts)):
            raise BuildError(f"pipeline(s) {', '.join(pipelines)} failed their check; see above")
        return
    selected = _select(functions, [n for n in names if n not in pipelines] if names else None)
    table = Table("function", "framework", "artifact", "weights", "tensors", "result", "seconds")
    rows: dict[str, tuple[str, ...]] = {}
    failed: list[SlserveError] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    store = _store(artifacts)
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {f.name: progress.add_task(f"{f.name}: waiting") for f in selected}

        def step(name: str, what: str) -> None:
            progress.update(tasks[name], description=f"{name}: {what}")

        workers = max(1, min(jobs or cores(), len(selected)))
        for done in build_all(selected, artifacts, force, step, workers):
            progress.remove_task(tasks[done.name])
            if done.error is not None or done.digest is None:
                failed.append(done.error or SlserveError(f"{done.name}: the build failed"))
                if len(selected) > 1:  # a lone build's error is the command's own (below)
                    err_console.print(f"[red]{escape(done.name)}[/]: {escape(failed[-1].message)}")
                continue
            m = store.open(done.digest).manifest
            rows[done.name] = (
                done.name,
                m.spec.framework.value,
                done.digest[:12],
                f"{m.weight_bytes / 1e6:,.1f} MB",
                str(len(m.tensors)),
                "cached" if done.cached else "built",
                f"{done.seconds:.1f}",
            )
            console.print(f"{done.name}: {rows[done.name][5]} in {done.seconds:.1f} s", highlight=False)
    for fdef in selected:
        if fdef.name in rows:
            table.add_row(*rows[fdef.name])
    print_table(console, table)
    pipelines_failed = _build_pipelines(functions, pipelines or None, store) if pipelines or not names else 0
    if pipelines_failed:
        failed.append(BuildError(f"{pipelines_failed} pipeline(s) failed their check"))
    if len(selected) == 1 and failed:
        raise failed[0]
    if failed:
        missing = ", ".join(sorted(f.name for f in selected if f.name not in rows))
        raise BuildError(f"{len(failed)} of {len(selected)} functions failed to build ({missing}); see above")


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="Function name (lowercase, digits, '-')")],
    framework: Annotated[str, typer.Option(help="torch (writes model.py) or onnx (writes export.py)")] = "torch",
    functions: FunctionsDir = DEFAULT_FUNCTIONS,
) -> None:
    """Start a function in functions/NAME/: a commented function.toml and starter code that builds and serves
    as it is; replace the code with your model's, and keep its signature table in step."""
    from slserve.starters import FRAMEWORKS, code_template, function_template

    if framework not in FRAMEWORKS:
        raise SlserveError(f"--framework {framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    target = functions / name
    if (target / SPEC_FILENAME).exists():
        raise SlserveError(f"{target / SPEC_FILENAME} exists already; edit it or pick another name")
    code_name, code = code_template(name, framework)
    if (target / code_name).exists():
        raise SlserveError(f"{target / code_name} exists already; move it away or pick another name")
    target.mkdir(parents=True, exist_ok=True)
    (target / SPEC_FILENAME).write_text(function_template(name, framework))
    (target / code_name).write_text(code)
    load_function(target)  # the template itself must parse
    console.print(
        f"wrote {target / SPEC_FILENAME} and {target / code_name} (a working starter); put your model in "
        f"{code_name}, keep its signature table in step, then `slserve build {name}`: a running gateway serves "
        "it at once",
        markup=False,
    )


@app.command()
def inspect(name: str, artifacts: ArtifactsDir = DEFAULT_ARTIFACTS) -> None:
    """Print a function's current manifest."""
    artifact = _store(artifacts).current(name)
    console.print_json(artifact.manifest.model_dump_json())


@app.command()
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Functions (default: all built)")] = None,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    full: Annotated[bool, typer.Option(help="Re-hash every blob, ignoring verification markers")] = False,
) -> None:
    """Check every blob of the functions' artifacts against its sha256."""
    store = _store(artifacts)
    for name in names or store.functions():
        artifact = store.current(name)
        artifact.verify(full=full)
        console.print(f"{name}: {artifact.digest[:12]} ok ({len(artifact.manifest.unique_blobs())} blobs)")


@app.command()
def invoke(
    names: Annotated[list[str] | None, typer.Argument(help="Functions (default: all built)")] = None,
    inputs: Annotated[str | None, typer.Option("--input", help='JSON object, e.g. {"text": ["hi"]}')] = None,
    artifacts: ArtifactsDir = DEFAULT_ARTIFACTS,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: from the spec)")] = None,
) -> None:
    """Load functions in this process and run one inference each (the signature's example input by default)."""
    from slserve.runtime import example_inputs, load_runtime
    from slserve.runtime.tensors import NUMPY_OF

    store = _store(artifacts)
    for name in names or store.functions():
        artifact = store.current(name)
        spec = artifact.manifest.spec
        started = time.perf_counter()
        runtime = load_runtime(artifact, device=device)
        loaded = time.perf_counter()
        if inputs:
            raw = json.loads(inputs)
            types = {t.name: NUMPY_OF[t.datatype] for t in spec.signature.inputs}
            feeds = {k: np.asarray(v, dtype=types.get(k)) for k, v in raw.items()}
        else:
            feeds = example_inputs(spec.signature)
        outputs = runtime.infer(feeds)
        done = time.perf_counter()
        shown = {k: _preview(v) for k, v in outputs.items()}
        console.print(
            f"[bold]{name}[/] ({spec.framework.value} on {runtime.device}): load {1e3 * (loaded - started):.0f} ms, "
            f"first call {1e3 * (done - loaded):.0f} ms -> {shown}"
        )


@app.command()
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
) -> None:
    """Run the gateway with every function behind it, each at zero instances until called."""
    from slserve.server import serve as run_server
    from slserve.settings import load_settings

    if config is not None:
        if not config.is_file():
            raise SlserveError(f"config file {config} not found")
        os.environ["SLSERVE_CONFIG"] = str(config)
    settings = load_settings(host=host, port=port, functions=functions, artifacts=artifacts, routes=routes, state=state)
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
    run_server(settings)


@app.command()
def status(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Show each function's instances (starting, idle, busy), queue depth and cold starts."""
    doc = _get_json("/slserve/functions", url, key, state)
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


@app.command()
def dashboard(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """The running gateway's dashboard: a link to open (carrying the admin key in its fragment, which the page
    keeps in its tab and never sends anywhere but the gateway), or with --json what the page shows."""
    from slserve.gateway import address

    doc = _get_json("/slserve/overview", url, key, state)  # checks the gateway is there and the key opens it
    if as_json:
        console.print_json(data=doc)
        return
    base = (url or address.find(state) or DEFAULT_URL).rstrip("/")
    token = key if key is not None else _dev_key(state)
    console.print(f"{base}/dashboard" + (f"#key={token}" if token else ""), highlight=False, soft_wrap=True)


@app.command()
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
        pinned = _get_json("/slserve/drift/pin", url, key, state, post={"model": model, "version": version})
        console.print(
            f"{model} version {pinned['version']}: reference pinned from {pinned['reference_rows']} live rows",
            highlight=False,
        )
        return
    doc = _get_json(f"/slserve/drift?model={model}", url, key, state)
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


features_app = typer.Typer(no_args_is_help=True, help="Feature tables for pipelines' lookups: load, list")
app.add_typer(features_app, name="features")


@features_app.command("load")
def features_load(
    table: Annotated[str, typer.Argument(help="Table name (a pipeline's lookup = ...)")],
    file: Annotated[Path, typer.Argument(help="A .parquet or .csv file: one key column, numeric feature columns")],
    key: Annotated[str | None, typer.Option(help="The key column (default: the first)")] = None,
    state: StateDir = DEFAULT_STATE,
) -> None:
    """Replace TABLE with FILE's rows (in one transaction; a running gateway sees them within its cache's TTL)."""
    from slserve.features import SQLiteFeatureStore
    from slserve.features.load import load_table

    if not file.is_file():
        raise SlserveError(f"{file}: no such file")
    store = SQLiteFeatureStore(state / "features.sqlite")
    try:
        loaded = load_table(store, table, file, key)
    finally:
        store.close()
    console.print(f"{table}: {loaded.rows} rows of {len(loaded.columns)} features ({', '.join(loaded.columns)})")


@features_app.command("list")
def features_list(state: StateDir = DEFAULT_STATE, as_json: AsJson = False) -> None:
    """The feature tables loaded: rows, width, columns, when and from where."""
    from slserve.features import SQLiteFeatureStore

    store = SQLiteFeatureStore(state / "features.sqlite")
    try:
        tables = store.tables()
    finally:
        store.close()
    if as_json:
        console.print_json(data=[vars(t) for t in tables])
        return
    out = Table("table", "rows", "width", "columns", "loaded", "from", box=box.SIMPLE_HEAD)
    for t in tables:
        loaded = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.loaded_at))
        out.add_row(t.name, str(t.rows), str(t.width), ", ".join(t.columns), loaded, t.source)
    print_table(console, out)


route_app = typer.Typer(no_args_is_help=True, help="Model versions, aliases, canaries and shadows (routes.toml)")
app.add_typer(route_app, name="route")
RoutesPath = Annotated[Path, typer.Option("--routes", envvar="SLSERVE_ROUTES", help="Routes file")]


def _routes_file(routes: Path, functions: Path) -> RoutesFile:
    from slserve.compose.spec import discover_pipelines
    from slserve.router.edit import RoutesFile

    return RoutesFile(routes, [*discover_functions(functions), *discover_pipelines(functions)])


@route_app.command("set")
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


@route_app.command("shadow")
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


@route_app.command("promote")
def route_promote(
    model: str, alias: str, routes: RoutesPath = DEFAULT_ROUTES, functions: FunctionsDir = DEFAULT_FUNCTIONS
) -> None:
    """Finish a canary: ALIAS becomes 100% the newest version of its split."""
    _, newest = _routes_file(routes, functions).promote(model, alias)
    console.print(f"{model}:{alias} -> {newest}")


@route_app.command("rollback")
def route_rollback(routes: RoutesPath = DEFAULT_ROUTES, functions: FunctionsDir = DEFAULT_FUNCTIONS) -> None:
    """Put the routes back as they were before the last change."""
    _routes_file(routes, functions).rollback()
    console.print(f"{routes} restored to its previous version")


@route_app.command("show")
def route_show(
    url: GatewayUrl = None,
    key: ApiKey = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """The routes a running gateway serves, and how its shadows compare."""
    doc = _get_json("/slserve/routes", url, key, state)
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


deploy_app = typer.Typer(no_args_is_help=True, help="Deploy the functions to another target (aws, modal)")
deploy_app.command("aws")(deploy_aws)
deploy_app.command("modal")(deploy_modal)
app.add_typer(deploy_app, name="deploy")

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create (the secret is shown once), list, revoke, rotate")
app.add_typer(keys_app, name="keys")


def _key_store(state: Path) -> Any:
    """The local key store, or the deployed one on AWS when SLSERVE_KEYS_TABLE names its table (with the HMAC
    key's secret in SLSERVE_KEY_SECRET_ARN, as the router reads it)."""
    table = os.environ.get("SLSERVE_KEYS_TABLE")
    if table:
        import boto3

        from slserve.accounts.dynamo import DynamoKeyStore, key_secret

        return DynamoKeyStore(boto3.client("dynamodb"), table, key_secret())
    from slserve.accounts.keys import SQLiteKeyStore

    return SQLiteKeyStore(state)


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(v for value in values for v in value.split(",") if v) if values else None


def _default_tier(tiers: tuple[str, ...] | None) -> str | None:
    """As the router chooses for a key without one: `standard` where the key opens it, else the first listed."""
    if not tiers:
        return None
    return "standard" if "standard" in tiers else tiers[0]


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Who pays for this key's requests")],
    models: Annotated[list[str] | None, typer.Option("--models", help="Models it opens (default all)")] = None,
    tiers: Annotated[list[str] | None, typer.Option("--tiers", help="Tiers it opens (default all)")] = None,
    default_tier: Annotated[str | None, typer.Option(help="Tier when a request names none")] = None,
    rate: Annotated[str | None, typer.Option(help="Token-bucket rate, e.g. 50/s or 600/min")] = None,
    burst: Annotated[int | None, typer.Option(help="Bucket size (default: one second of --rate)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once")] = None,
    quota: Annotated[str | None, typer.Option(help="Charged requests per month, e.g. 100000/month")] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h, or a date such as 2026-12-31")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May read /slserve/* (status, routes)")] = False,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Make a key; its secret is printed once and stored only as a keyed hash."""
    from slserve.accounts.keys import new_key
    from slserve.accounts.limits import parse_expiry, parse_quota, parse_rate

    tier_list = _split(tiers)
    if (concurrency is not None and concurrency < 1) or (burst is not None and burst < 1):
        raise SlserveError("--concurrency and --burst must be at least 1")
    record = new_key(
        tenant,
        models=_split(models),
        tiers=tier_list,
        default_tier=default_tier or _default_tier(tier_list),
        rate_per_s=parse_rate(rate) if rate else None,
        burst=burst,
        concurrency=concurrency,
        quota_per_month=parse_quota(quota) if quota else None,
        expires_at=parse_expiry(expires) if expires else None,
        admin=admin,
    )
    store = _key_store(state)
    token = store.create(record)
    key_id = token.split("_")[1]
    if as_json:
        console.print_json(data={"key": token, **store.get(key_id).public()})
        return
    console.print(f"key {key_id} for tenant {tenant!r} (shown once; store it now):")
    print(token)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """Every key with its scope and limits (never a secret)."""
    keys = _key_store(state).list(tenant)
    if as_json:
        console.print_json(data=[k.public() for k in keys])
        return
    table = Table(
        "key",
        "tenant",
        "models",
        "tiers",
        "default tier",
        "rate/s",
        "conc.",
        "quota/mo",
        "expires",
        "state",
        box=box.SIMPLE_HEAD,
        caption="default tier -: standard where the model offers it, else its cheapest tier",
    )
    now = time.time()
    for k in keys:
        state_word = "revoked" if k.revoked_at else "expired" if k.expires_at and k.expires_at <= now else "active"
        table.add_row(
            k.key_id + (" (admin)" if k.admin else ""),
            k.tenant,
            ",".join(k.models) if k.models else "all",
            ",".join(k.tiers) if k.tiers else "all",
            k.default_tier or "-",
            f"{k.rate_per_s:g}" if k.rate_per_s else "-",
            str(k.concurrency or "-"),
            str(k.quota_per_month or "-"),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.expires_at)) if k.expires_at else "-",
            state_word,
        )
    print_table(console, table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, state: StateDir = DEFAULT_STATE) -> None:
    """Revoke a key: the running gateway refuses it from its next request."""
    _key_store(state).revoke(key_id)
    console.print(f"key {key_id} revoked")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    grace: Annotated[str, typer.Option(help="How long the old secret keeps working (e.g. 1h, 0s)")] = "1h",
    state: StateDir = DEFAULT_STATE,
) -> None:
    """A new secret for the same key (same id, scope, limits and usage); the old one works for --grace more."""
    from slserve.accounts.limits import parse_duration

    grace_s = parse_duration(grace)
    if grace_s is None:
        raise SlserveError(f"--grace {grace!r} is not like '0s', '30m' or '1h'")
    token = _key_store(state).rotate(key_id, grace_s)
    console.print(f"key {key_id} rotated; the old secret works for {grace} more. New secret (shown once):")
    print(token)


@app.command()
def usage(
    tenant: Annotated[str, typer.Option(help="Whose usage")],
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default this month, UTC)")] = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV (one row per model, version and tier, then TOTAL)")
    ] = False,
    state: StateDir = DEFAULT_STATE,
    as_json: AsJson = False,
) -> None:
    """A tenant's requests and charges for a month, per model, version and tier (exact, from the ledger)."""
    from slserve.metering import usage as reports
    from slserve.metering.ledger import SQLiteLedger
    from slserve.settings import load_settings

    name, start, end = reports.month_span(month)
    ledger = SQLiteLedger(state / "ledger.sqlite")
    try:
        doc = reports.report(ledger.usage(start, end, tenant=tenant), name, load_settings().currency, tenant=tenant)
    finally:
        asyncio.run(ledger.close())
    if as_csv:
        print(reports.to_csv(doc), end="")
        return
    if as_json:
        console.print_json(data=doc)
        return
    columns = ("model", "version", "tier", "requests", "failed", "abandoned", "tokens", "charged", "compute cost")
    table = Table(*columns, box=box.SIMPLE_HEAD)
    for row in doc["usage"]:
        counts = (row["requests"], row["failed"], row["abandoned"], row["tokens"])
        money = (row["charged"], row["compute_cost"])
        table.add_row(row["model"], row["version"], row["tier"], *map(str, counts), *money)
        for step in row.get("steps", []):  # a pipeline's charge, itemized: its steps sum to it
            where = f"  {step['step']}: {step['model']}"
            table.add_row(where, step["version"], step["tier"], str(step["requests"]), "", "", "", step["charged"])
    total = doc["total"]
    totals = (str(total["requests"]), str(total["failed"]), str(total["abandoned"]))
    table.add_row("total", "", "", *totals, "", total["charged"], total["compute_cost"], style="bold")
    console.print(f"usage of tenant {tenant!r} in {name} ({doc['currency']})")
    print_table(console, table)


def _get_json(path: str, url: str | None, key: str | None, state: Path, post: Any = None) -> Any:
    """GET `path` (POST `post` as JSON, when given) from the gateway at `url`, else the one that recorded itself
    in `state`, else the default."""
    import urllib.error
    import urllib.request

    from slserve.gateway import address

    found = url or address.find(state)
    base = (found or DEFAULT_URL).rstrip("/")
    if key is None:
        key = _dev_key(state)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if post is None else json.dumps(post).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read())
            said = error_from_wire(e.code, doc["code"], doc["error"])  # labelled with the gateway's own code
        except (ValueError, KeyError, TypeError):
            said = SlserveError(str(e))
        raise type(said)(f"the gateway at {base} said {e.code}: {said.message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        how = "given by --url or SLSERVE_URL" if url else "recorded in " + str(state) if found else "the default"
        raise GatewayUnreachable(
            f"no gateway answers at {base} ({how}): {reason}; start one with `slserve serve`, or pass --url "
            f"(or --state, to find the one serving that folder)"
        ) from None


def _dev_key(state: Path) -> str:
    path = state / "dev-key"
    return path.read_text().strip() if path.is_file() else ""


def _preview(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    head = ", ".join(f"{v:.4g}" if isinstance(v, float | np.floating) else str(v) for v in flat[:4])
    return f"{arr.dtype}{list(arr.shape)} [{head}{', …' if flat.size > 4 else ''}]"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except SlserveError as e:
        err_console.print(f"[red]error[/] ({e.code}): {escape(e.message)}")
        raise SystemExit(2) from None
