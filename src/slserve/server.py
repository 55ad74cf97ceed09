"""Run the gateway with the embedded platform on uvicorn (uvloop + httptools, its heads bounded).

The local templates are launched first, before the gateway's own imports and start, which their framework
imports (torch's above all) then overlap: the order is what makes a restarted gateway's first answer come
sooner (RESULTS.md, "A restarted gateway").
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from slserve.spec import TARGETS, discover_functions

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("slserve.gateway")


def make_server(settings: ServeSettings) -> uvicorn.Server:
    """The gateway and the embedded platform in this one process."""
    targets = hosted_targets(settings)
    from slserve.gateway.app import build_app

    return _uvicorn(build_app(targets, settings), settings)


def make_front(settings: ServeSettings, platform_socket: Path) -> uvicorn.Server:
    """One front worker of several: the gateway, its functions (of every target) run by the platform process
    (`platform`), keys' limits, the dashboard's timeline and shadows' comparisons counted there."""
    catalog = _begin(settings)
    from slserve.gateway.app import build_app
    from slserve.platform.linked import LinkedComparisons, LinkedExecutor, LinkedLimits, LinkedTimeline, PlatformLink

    link = PlatformLink(platform_socket)
    linked = LinkedExecutor(link)
    targets = Targets(catalog, {target: linked for target in TARGETS})
    limits, timeline, comparisons = LinkedLimits(link), LinkedTimeline(link), LinkedComparisons(link)
    app = build_app(targets, settings, limits=limits, timeline=timeline, comparisons=comparisons, record_address=False)
    return _uvicorn(app, settings)


def platform(settings: ServeSettings, platform_socket: Path) -> None:
    """The platform process of several front workers: every target's executor (the local functions' templates,
    pools and instances; Lambda's and Modal's clients), keys' limits, the timeline and shadows, until SIGTERM
    (Ctrl-C reaches the supervisor, which stops the fronts first)."""
    import signal

    import uvloop

    from slserve.platform.local.service import PlatformService

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    service = PlatformService(hosted_targets(settings), platform_socket)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await service.serve(stop, settings.drain_seconds)

    uvloop.run(run())


def hosted_targets(settings: ServeSettings) -> Targets:
    """Every target's executor in this process (the gateway's, or the platform process's of several fronts),
    the local functions' templates launched."""
    catalog = _begin(settings)
    local = local_executor(settings, catalog.store)
    local.launch([f for f in catalog.functions().values() if f.target == "local"])
    return Targets(catalog, *executors(settings, catalog, local))


def _begin(settings: ServeSettings) -> FolderCatalog:
    logs.configure(settings.log_level, settings.log_format)
    traces = tracing.configure()
    if traces is not None:
        log.info("traces on (OTEL_TRACES_EXPORTER=%s)", traces)
    store = ArtifactStore(settings.artifacts)
    return FolderCatalog(store, settings.functions, discover_functions(settings.functions))


def _uvicorn(app: Any, settings: ServeSettings) -> uvicorn.Server:
    import uvicorn

    from slserve.gateway.connection import BoundedHttpTools

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


def local_executor(settings: ServeSettings, store: ArtifactStore) -> LocalExecutor:
    return LocalExecutor(
        store,
        settings.cores,
        _mb(settings.memory_budget_mb),
        learned=settings.keep_alive == "learned",
        gaps_file=settings.state / GAPS_FILE,
    )


def _mb(mb: float | None) -> int | None:
    return None if mb is None else int(mb * 1024 * 1024)


def executors(
    settings: ServeSettings, catalog: FolderCatalog, local: Executor
) -> tuple[dict[str, Executor], dict[str, str]]:
    """The local executor, and the `aws` and `modal` ones where a function targets them; and for each target
    named but not runnable here, what would make it runnable."""
    out: dict[str, Executor] = {"local": local}
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
    """One process; `slserve.workers` runs several fronts and a platform instead."""
    setproctitle(f"slserve gateway {settings.host}:{settings.port}")
    make_server(settings).run()
