"""The gateway: one ASGI app in front of every function. It speaks protocols; the platform runs functions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import slserve
from slserve.errors import SlserveError
from slserve.gateway.infer_path import InferPath, error_body
from slserve.gateway.openapi import openapi_document
from slserve.platform.base import Platform
from slserve.router.dispatch import Router
from slserve.router.table import version_order
from slserve.settings import ServeSettings
from slserve.spec import FunctionDef

log = logging.getLogger("slserve.gateway")
PLATFORMS = {"torch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: SlserveError) -> Response:
    body, headers = error_body(error)
    return Response(body, error.status, headers)


class Gateway:
    def __init__(self, platform: Platform, settings: ServeSettings, router: Router) -> None:
        self.platform = platform
        self.settings = settings
        self.router = router

    def function(self, model: str, version: str | None) -> FunctionDef:
        """The function that answers for `model` (a model name through the routes, or a function's name) and
        `version` (a version or an alias)."""
        return self.router.signature_function(self.router.route(model, version, "", None, True, 1.0))

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        fdef = self.function(model, version)
        table = self.router.table.models.get(model)
        versions = sorted(table.versions, key=version_order) if table else [fdef.spec.model.version]
        return {**model_metadata(fdef), "name": model, "versions": versions}

    # --- health and metadata -------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.platform.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "slserve", "version": slserve.__version__, "extensions": ["binary_tensor_data"]})

    async def models(self, request: Request) -> Response:
        return json_response({"models": [model_metadata(f) for f in self.platform.functions().values()]})

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.metadata(request.path_params["model"], request.path_params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        fdef = self.function(request.path_params["model"], request.path_params.get("version"))
        status = next(s for s in self.platform.status() if s.name == fdef.name)
        ready = status.artifact is not None and self.platform.ready()
        return json_response({"name": request.path_params["model"], "ready": ready}, 200 if ready else 503)

    async def functions_status(self, request: Request) -> Response:
        return json_response({"functions": [s.to_dict() for s in self.platform.status()]})

    async def routes_status(self, request: Request) -> Response:
        return json_response(self.router.describe())

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())


def model_metadata(fdef: FunctionDef) -> dict[str, Any]:
    spec = fdef.spec
    return {
        "name": fdef.name,
        "versions": [spec.model.version],
        "platform": PLATFORMS[spec.framework.value],
        "inputs": [t.model_dump(mode="json") for t in spec.signature.inputs],
        "outputs": [t.model_dump(mode="json") for t in spec.signature.outputs],
    }


async def _slserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SlserveError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}; see GET /openapi.json", 405: f"{request.method} is not allowed here"}
    return json_response({"error": message.get(exc.status_code, exc.detail)}, exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": f"internal error ({type(exc).__name__}); the server logged it"}, 500)


def build_app(platform: Platform, settings: ServeSettings) -> InferPath:
    """Starlette for health, metadata and status; `InferPath` in front of it for inference."""
    router = Router(platform.functions(), settings.routes)
    gw = Gateway(platform, settings, router)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", gw.live),
        Route("/v2/health/ready", gw.ready),
        Route("/v2", gw.server_metadata),
        Route("/v2/models", gw.models),
        Route(model, gw.model_metadata),
        Route(versioned, gw.model_metadata),
        Route(f"{model}/ready", gw.model_ready),
        Route(f"{versioned}/ready", gw.model_ready),
        Route("/slserve/functions", gw.functions_status),
        Route("/slserve/routes", gw.routes_status),
        Route("/openapi.json", gw.openapi),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await platform.start()
        watcher = asyncio.get_running_loop().create_task(watch_routes(router))
        try:
            yield
        finally:
            watcher.cancel()
            await platform.stop(settings.drain_seconds)

    handlers = {SlserveError: _slserve_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return InferPath(app, platform, router, settings.max_body_bytes)


async def watch_routes(router: Router, every_s: float = 1.0) -> None:
    """Route changes take effect without a restart: the table is swapped between requests, never during one."""
    while True:
        await asyncio.sleep(every_s)
        router.reload_if_changed()
