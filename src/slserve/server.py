"""Run the gateway with the embedded platform on uvicorn (uvloop + httptools)."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn
from setproctitle import setproctitle

from slserve.gateway import logs
from slserve.gateway.app import build_app
from slserve.platform.base import Executor
from slserve.platform.catalog import FolderCatalog
from slserve.platform.local import LocalExecutor
from slserve.platform.targets import Targets
from slserve.settings import ServeSettings
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions

log = logging.getLogger("slserve.gateway")


def make_server(settings: ServeSettings) -> uvicorn.Server:
    logs.configure(settings.log_level, settings.log_format)
    store = ArtifactStore(settings.artifacts)
    catalog = FolderCatalog(store, settings.functions, discover_functions(settings.functions))
    platform = Targets(catalog, executors(settings, store, catalog))
    app = build_app(platform, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=settings.log_level,
        log_config=None,  # logs.configure has set up slserve's and uvicorn's loggers
        access_log=False,
        proxy_headers=False,  # nothing reads the client address; spares a middleware layer per request
        server_header=False,  # says nothing about the software; one header less per response
        timeout_graceful_shutdown=round(settings.drain_seconds),
        timeout_keep_alive=round(settings.keep_alive_s),
    )
    return uvicorn.Server(config)


def executors(settings: ServeSettings, store: ArtifactStore, catalog: FolderCatalog) -> dict[str, Executor]:
    """The local executor always; the `aws` one where a function targets it (it needs the `aws` extra)."""
    out: dict[str, Executor] = {"local": LocalExecutor(store)}
    if any(f.target == "aws" for f in catalog.functions().values()) or settings.aws_endpoint_url:
        if importlib.util.find_spec("boto3") is None:
            log.warning("functions target aws, but boto3 is not installed: `pip install 'slserve[aws]'`")
            return out
        from botocore.exceptions import BotoCoreError

        from slserve.platform.aws import LambdaExecutor, lambda_client

        concurrency = 64
        try:
            client = lambda_client(
                settings.aws_region, settings.aws_endpoint_url, concurrency, settings.request_timeout_s
            )
        except BotoCoreError as e:  # no region, a broken profile: its functions are refused with the reason
            log.warning("functions target aws, but no Lambda client could be made (%s): set SLSERVE_AWS_REGION", e)
            return out
        out["aws"] = LambdaExecutor(client, settings.aws_prefix, concurrency=concurrency)
    return out


def serve(settings: ServeSettings) -> None:
    setproctitle(f"slserve gateway {settings.host}:{settings.port}")
    make_server(settings).run()
