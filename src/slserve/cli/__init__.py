"""`slserve ...`: build, inspect, verify and invoke functions; serve them behind the gateway."""

from __future__ import annotations

import os

import typer
from rich.markup import escape

from slserve.aws.cli import deploy_aws
from slserve.cli import features, functions, gateway, keys, routes, usage
from slserve.cli.common import err_console
from slserve.errors import SlserveError
from slserve.modal.cli import deploy_modal

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
for command in (
    functions.build,
    functions.init,
    functions.inspect,
    functions.verify,
    functions.invoke,
    gateway.serve,
    gateway.status,
    gateway.dashboard,
    gateway.drift,
    usage.usage,
):
    app.command()(command)
app.add_typer(features.app, name="features")
app.add_typer(routes.app, name="route")
deploy = typer.Typer(no_args_is_help=True, help="Deploy the functions to another target (aws, modal)")
deploy.command("aws")(deploy_aws)
deploy.command("modal")(deploy_modal)
app.add_typer(deploy, name="deploy")
app.add_typer(keys.app, name="keys")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except SlserveError as e:
        err_console.print(f"[red]error[/] ({e.code}): {escape(e.message)}")
        raise SystemExit(2) from None
