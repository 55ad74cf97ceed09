"""Run the gateway with the embedded platform on uvicorn (uvloop + httptools)."""

from __future__ import annotations

import uvicorn
from setproctitle import setproctitle

from slserve.gateway import logs
from slserve.gateway.app import build_app
from slserve.platform.catalog import FolderCatalog
from slserve.platform.local import LocalExecutor
from slserve.platform.targets import Targets
from slserve.settings import ServeSettings
from slserve.snapshot import ArtifactStore
from slserve.spec import discover_functions


def make_server(settings: ServeSettings) -> uvicorn.Server:
    logs.configure(settings.log_level, settings.log_format)
    store = ArtifactStore(settings.artifacts)
    catalog = FolderCatalog(store, settings.functions, discover_functions(settings.functions))
    platform = Targets(catalog, {"local": LocalExecutor(store)})
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


def serve(settings: ServeSettings) -> None:
    setproctitle(f"slserve gateway {settings.host}:{settings.port}")
    make_server(settings).run()
