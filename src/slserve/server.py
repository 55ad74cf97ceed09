"""Run the gateway with the embedded platform on uvicorn (uvloop + httptools, its heads bounded).

The local templates are launched first, before the gateway's own imports and start, which their framework
imports (torch's above all) then overlap: the order is what makes a restarted gateway's first answer come
sooner (RESULTS.md, "A restarted gateway").
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from setproctitle import setproctitle

from slserve import tracing
from slserve.gateway import logs
from slserve.keepalive import GAPS_FILE
from slserve.platform.base import Executor
from slserve.platform.catalog import FolderCatalog
from slserve.platform.local import LocalExecutor
from slserve.platform.targets import Targets
from slserve.settings import ServeSettings
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("slserve.gateway")


def make_server(settings: ServeSettings) -> uvicorn.Server:
    logs.configure(settings.log_level, settings.log_format)
    traces = tracing.configure()
    if traces is not None:
        log.info("traces on (OTEL_TRACES_EXPORTER=%s)", traces)
    store = ArtifactStore(settings.artifacts)
    catalog = FolderCatalog(store, settings.functions, discover_functions(settings.functions))
    made, missing = executors(settings, catalog)
    local = made["local"]
    assert isinstance(local, LocalExecutor)
    local.launch([f for f in catalog.functions().values() if f.target == "local"])
    import uvicorn

    from slserve.gateway.app import build_app
    from slserve.gateway.connection import BoundedHttpTools

    app = build_app(Targets(catalog, made, missing), settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpTools.bounded(settings.max_head_kb * 1024, settings.head_timeout_s),
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


def _mb(mb: float | None) -> int | None:
    return None if mb is None else int(mb * 1024 * 1024)


def executors(settings: ServeSettings, catalog: FolderCatalog) -> tuple[dict[str, Executor], dict[str, str]]:
    """The local executor always; the `aws` and `modal` ones where a function targets them; and for each
    target named but not runnable here, what would make it runnable."""
    out: dict[str, Executor] = {
        "local": LocalExecutor(
            catalog.store,
            settings.cores,
            _mb(settings.memory_budget_mb),
            learned=settings.keep_alive == "learned",
            gaps_file=settings.state / GAPS_FILE,
        )
    }
    missing: dict[str, str] = {}
    targets = {f.target for f in catalog.functions().values()}
    remote = {"aws": (_aws_executor, settings.aws_endpoint_url), "modal": (_modal_executor, settings.modal_url)}
    for target, (make, configured) in remote.items():
        if target not in targets and not configured:
            continue
        made = make(settings)
        if isinstance(made, str):
            missing[target] = made
            log.warning("functions target %s, but %s", target, made)
        else:
            out[target] = made
    return out, missing


def _aws_executor(settings: ServeSettings) -> Executor | str:
    if importlib.util.find_spec("boto3") is None:
        return "boto3 is not installed: `pip install 'slserve[aws]'`"
    from botocore.exceptions import BotoCoreError

    from slserve.platform.aws import LambdaExecutor, lambda_client

    concurrency = 64
    try:
        client = lambda_client(settings.aws_region, settings.aws_endpoint_url, concurrency, settings.request_timeout_s)
    except BotoCoreError as e:  # no region, a broken profile
        return f"no Lambda client could be made ({e}): set SLSERVE_AWS_REGION"
    return LambdaExecutor(client, settings.aws_prefix, concurrency=concurrency)


def _modal_executor(settings: ServeSettings) -> Executor | str:
    if importlib.util.find_spec("httpx") is None:
        return "httpx is not installed: `pip install 'slserve[modal]'`"
    if not settings.modal_url or settings.modal_secret is None:
        return "set SLSERVE_MODAL_URL and SLSERVE_MODAL_SECRET (`slserve deploy modal` prints both)"
    from slserve.platform.modal import ModalExecutor

    secret = settings.modal_secret.get_secret_value()
    return ModalExecutor(settings.modal_url, secret, settings.request_timeout_s, settings.modal_prefix)


def serve(settings: ServeSettings) -> None:
    setproctitle(f"slserve gateway {settings.host}:{settings.port}")
    make_server(settings).run()
