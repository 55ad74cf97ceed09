"""`slserve deploy aws`: the AWS target from the command line (packages, stack, checks, costs, deploy)."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich import box
from rich.table import Table

from slserve.remote.deploying import stop_unless_deployable
from slserve.settings import DEFAULT_ROUTES
from slserve.terminal import make_console, print_table

if TYPE_CHECKING:
    from slserve.platform.base import Deployed
    from slserve.snapshot import ArtifactStore

console = make_console()


def deploy_aws(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Package, synthesize and check; deploy nothing")] = False,
    functions: Annotated[Path, typer.Option("--functions", envvar="SLSERVE_FUNCTIONS")] = Path("functions"),
    artifacts: Annotated[Path, typer.Option("--artifacts", envvar="SLSERVE_ARTIFACTS")] = Path(".slserve/artifacts"),
    routes: Annotated[Path, typer.Option("--routes", envvar="SLSERVE_ROUTES")] = DEFAULT_ROUTES,
    only: Annotated[str | None, typer.Option("--only", help="Comma-separated functions (default: all)")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where the template goes")] = Path("cdk.out"),
    work: Annotated[Path, typer.Option("--work", help="Where the packages are built")] = Path(".slserve/aws"),
    api: Annotated[str, typer.Option("--api", help="http (default) or rest (usage plans and a WAF)")] = "http",
    modal_url: Annotated[
        str | None,
        typer.Option("--modal-url", help="Where GPU functions run (`deploy modal` prints it)"),
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Names every resource: one stack per prefix (slserve-staging, ...)")
    ] = "slserve",
    modal_prefix: Annotated[str, typer.Option("--modal-prefix", help="`deploy modal --prefix`")] = "slserve",
    key_secret_arn: Annotated[
        str | None,
        typer.Option("--key-secret-arn", help="Reuse the API keys' HMAC secret an earlier stack left (KeySecretArn)"),
    ] = None,
) -> None:
    """Package every function (zip or image), synthesize the CDK stack into cdk.out/, run cdk-nag and cfn-lint,
    and print each package's size and the cost per million requests per tier. Without --dry-run, also deploy
    (with the CDK CLI, when credentials and Docker are there; otherwise it says what is missing)."""
    import importlib.util

    missing = [m for m in ("boto3", "aws_cdk", "cdk_nag", "cfnlint") if importlib.util.find_spec(m) is None]
    if missing:  # before minutes of packaging
        console.print(f"deploy aws needs {', '.join(missing)}: pip install 'slserve[deploy]'")
        raise typer.Exit(2)

    from slserve.aws import costs, deploy
    from slserve.remote.costs import charged_per_million, measure_compute
    from slserve.snapshot import ArtifactStore

    if api not in ("http", "rest"):
        raise typer.BadParameter("--api is http or rest")
    store = ArtifactStore(artifacts)
    kind: Literal["http", "rest"] = "rest" if api == "rest" else "http"
    chosen = only.split(",") if only else None
    stage = deploy.Stage(prefix, modal_prefix, key_secret_arn)
    deployment = deploy.prepare(store, functions, routes, work, console.print, chosen, kind, modal_url, stage)
    plan, catalog = deployment.plan, deployment.catalog
    if modal_url:
        names = ", ".join(f.name for f in deployment.on_modal) or "none"
        console.print(f"the router sends {names} to the modal target ({modal_url}); its secret: ModalEndpointSecret")
    template = deploy.synthesize(plan, out)
    console.print(f"synthesized {template} (cdk-nag AwsSolutions and Serverless checks: clean)")
    findings = deploy.lint(template)
    for finding in findings:
        console.print(f"cfn-lint: {finding}")
    if findings:
        raise typer.Exit(1)
    ignored = ", ".join(f"{rule} ({why})" for rule, why in deploy.LINT_IGNORED.items())
    console.print(f"cfn-lint: clean (ignoring {ignored})")
    table = Table(
        *("function", "tier", "start", "memory MB", "compute ms", "AWS $/M requests", "restore $", "charged $/M"),
        box=box.SIMPLE_HEAD,
    )
    estimates = []
    for f in plan.functions:
        function = catalog.functions()[f.name]
        measured = measure_compute(store, function)
        e = costs.estimate(f, measured.compute_ms, charged_per_million(function, routes), kind)
        estimates.append(e)
        table.add_row(
            f.name,
            e.tier,
            f.start()[0],
            str(e.memory_mb),
            f"{e.compute_ms:.1f}",
            f"{e.aws_per_million:.2f}",
            f"{e.restore_per_cold_start:.5f}" if e.restore_per_cold_start else "-",
            f"{e.charged_per_million:.2f}",
        )
        console.print(f"  {f.name}: compute {measured.provenance}")
    print_table(console, table)
    resources = json.loads(template.read_text())["Resources"].values()
    alarms = sum(1 for r in resources if r["Type"] == "AWS::CloudWatch::Alarm")
    monthly = costs.fixed_per_month(estimates, kind, alarms, modal_url is not None)
    api_name = "REST API + WAF" if kind == "rest" else "HTTP API"
    console.print(
        f"AWS, per request: model function + router (waiting for it) + {api_name} + the ledger record "
        f"({costs.LEDGER_WRITES} DynamoDB writes: the item and its indexes) + CloudWatch logs; list prices "
        "(us-east-1, x86). restore $: a SnapStart restore, per cold start. Charged: the tier's prices "
        "(micro-units per request = currency per million)."
    )
    console.print(
        f"AWS, per month with no traffic: ${monthly:.2f} (secrets, the alarm topic's key, {alarms} alarms"
        f"{', the WAF' if kind == 'rest' else ''}, SnapStart snapshot caches)"
    )
    if dry_run:
        return
    images = any(p.image for p in deployment.packages)
    stop_unless_deployable(console, deploy.missing_for_deploy(images))
    outputs = work / "outputs.json"
    command = ["npx", "--yes", deploy.CDK_CLI, "deploy", "--app", str(out), "--require-approval", "never"]
    subprocess.run([*command, "--outputs-file", str(outputs)], check=True)
    upload_artifacts(store, [catalog.functions()[f.name] for f in plan.functions], outputs)


def upload_artifacts(store: ArtifactStore, functions: list[Deployed], outputs: Path) -> None:
    """Every deployed artifact into the stack's bucket, content-addressed (what is there is not sent again)."""
    import json

    import boto3
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from slserve.aws.upload import upload

    bucket = next(iter(json.loads(outputs.read_text()).values()))["ArtifactBucket"]
    s3 = boto3.client("s3")
    with Progress(*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
        for function in functions:
            assert function.digest is not None
            task = bar.add_task(function.name, total=store.open(function.digest).manifest.weight_bytes)
            done = upload(s3, bucket, store, function.name, function.digest, partial(bar.advance, task))
            sent = f"{done.sent} blobs sent ({done.sent_bytes >> 20} MB)"
            bar.console.print(f"{function.name}: {sent}, {done.skipped} already there")
