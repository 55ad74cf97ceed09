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
from slserve import tracing
from slserve.accounts.keys import KeyStore, SQLiteKeyStore
from slserve.accounts.limits import Limiter, Limits
from slserve.compose.catalog import DeployedPipeline, PipelineCatalog, Pipelines
from slserve.drift.monitor import DriftMonitor
from slserve.drift.profile import Profile, Thresholds
from slserve.drift.reference import reference_of
from slserve.errors import (
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RuntimeUnavailable,
    SlserveError,
)
from slserve.features import CachedFeatures, SQLiteFeatureStore
from slserve.gateway import address, openai
from slserve.gateway.auth import Authenticator, check_model
from slserve.gateway.dashboard import PAGE, Overview
from slserve.gateway.endpoints import ENDPOINTS
from slserve.gateway.front import Front, caller
from slserve.gateway.metrics import Metrics
from slserve.gateway.openapi import openapi_document
from slserve.gateway.passage import Passage
from slserve.gateway.replies import error_reply
from slserve.metering import usage
from slserve.metering.fleet import FleetState, SQLiteFleetState
from slserve.metering.ledger import SQLiteLedger
from slserve.metering.records import Ledger
from slserve.platform.base import Deployed, Platform
from slserve.platform.timeline import Timeline, Timelines
from slserve.protocols import parse
from slserve.protocols.admin import DriftPin
from slserve.router import pricing
from slserve.router.live import Router
from slserve.serving import Runner
from slserve.serving.shadows import Comparisons
from slserve.settings import ServeSettings
from slserve.snapshot import ArtifactStore
from slserve.spec import version_order

log = logging.getLogger("slserve.gateway")
PLATFORMS = {"torch": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: SlserveError, path: str) -> Response:
    status, body, headers = error_reply(error, path)
    return Response(body, status, headers)


class Gateway:
    def __init__(
        self,
        platform: Platform,
        settings: ServeSettings,
        runner: Runner,
        ledger: Ledger | None,
        summary: Overview,
    ) -> None:
        self.platform = platform
        self.settings = settings
        self.runner = runner
        self.router = runner.router
        self.ledger = ledger
        self.summary = summary  # what the dashboard shows
        self.monitor = runner.monitor

    def function(self, request: Request, model: str, version: str | None) -> Deployed | DeployedPipeline:
        """The function that answers for `model` (a model name through the routes, or a function's name) and
        `version` (a version or an alias), if the caller's key opens it."""
        key = caller(request.scope)
        route = self.router.default_route(model, version, opens=key.models)
        check_model(key, route.model)
        return self.router.signature_function(route)

    def metadata(self, request: Request, model: str, version: str | None) -> dict[str, Any]:
        fdef = self.function(request, model, version)
        if fdef.digest is None:  # nothing to serve yet: no metadata promises what no request can get
            raise RuntimeUnavailable(fdef.error or f"{fdef.name} cannot serve")
        table = self.router.table.models.get(model)
        versions = sorted(table.versions, key=version_order) if table else [fdef.spec.model.version]
        doc = {**model_metadata(fdef), "name": model, "versions": versions}
        if isinstance(fdef, Deployed):
            tier = fdef.spec.tier
            doc["price"] = pricing.published(tier, self.router.table.tiers[tier], fdef.spec.pricing)
        return doc

    # --- health and metadata -------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        await self.platform.catch_up()
        ready = self.platform.ready()
        functions = {s.name: s.ready for s in self.platform.status()}  # which can serve already, which not yet
        pipelines = {name: self.pipeline_ready(name)[0] for name in self.router.pipelines}
        doc = {"ready": ready, "functions": functions, **({"pipelines": pipelines} if pipelines else {})}
        return json_response(doc, 200 if ready else 503)

    def pipeline_ready(self, name: str) -> tuple[bool, str | None]:
        """A pipeline is ready when it is built, its steps fit the functions deployed, and the function each of
        its model steps is routed to by default can serve now."""
        graph = self.router.graphs.get(name)
        if graph is None:
            return False, self.router.pipeline_errors.get(name)
        status = {s.name: s for s in self.platform.status()}
        for step in graph.order:
            if step.model is None:
                continue
            try:
                route = self.router.default_route(step.model, step.version, step.tier)
            except SlserveError as e:
                return False, f"{step.describe()}: {e.message}"
            function = status.get(route.candidates[0][1]) if route.candidates else None
            if function is None or not function.ready:
                why = function.error if function and function.error else "its function is starting"
                return False, f"{step.describe()}: {why}"
        return True, None

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "slserve", "version": slserve.__version__, "extensions": ["binary_tensor_data"]})

    async def models(self, request: Request) -> Response:
        allowed = caller(request.scope).models
        functions: list[Deployed | DeployedPipeline] = [*self.platform.functions().values()]
        functions += self.router.pipelines.values()
        visible = [f for f in functions if allowed is None or f.spec.model.name in allowed]
        return json_response({"models": [model_metadata(f) for f in visible]})

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.metadata(request, request.path_params["model"], request.path_params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        """Ready when the function the model resolves to can take a request now: built, its artifact checked
        intact, its runtime's template up, not failing to start (else 503, with why)."""
        fdef = self.function(request, request.path_params["model"], request.path_params.get("version"))
        await self.platform.catch_up()
        if isinstance(fdef, DeployedPipeline):
            composed, why = self.pipeline_ready(fdef.name)
            answer = {"name": request.path_params["model"], "ready": composed, **({} if composed else {"reason": why})}
            return json_response(answer, 200 if composed else 503)
        status = next(s for s in self.platform.status() if s.name == fdef.name)
        ready = status.ready  # its own runtime family's template: not every family's
        doc: dict[str, Any] = {"name": request.path_params["model"], "ready": ready}
        if not ready:
            doc["reason"] = status.error or f"its runtime ({status.framework}) is starting"
        return json_response(doc, 200 if ready else 503)

    async def functions_status(self, request: Request) -> Response:
        await self.platform.catch_up()
        monitor = self.monitor
        functions = [
            {**s.to_dict(), "drifting": monitor.drifting(s.model, s.version) if monitor else None}
            for s in self.platform.status()
        ]
        return json_response({"functions": functions, "host": self.platform.host()})

    # --- drift ---------------------------------------------------------------------------------------------

    def _monitor(self) -> DriftMonitor:
        if self.monitor is None:
            raise NotFound("drift monitoring is off on this server (drift = false)")
        return self.monitor

    async def drift(self, request: Request) -> Response:
        """Each model version's drift from its reference (`?model=` for one model), with the shadow comparisons
        of the same versions."""
        monitor = self._monitor()
        model = request.query_params.get("model")
        if model is not None and model not in self.router.table.models:
            raise ModelNotFound(f"unknown model {model!r}; models: {sorted(self.router.table.models)}")
        versions = [d.to_dict() for d in monitor.report(model)]
        await self.platform.catch_up()
        shadows = self.runner.shadows.describe(model)
        return json_response({"window_s": monitor.window_s, "versions": versions, "shadows": shadows})

    async def drift_pin(self, request: Request) -> Response:
        """`{"model": M, "version": V}`: the version's live window becomes its drift reference (V defaults to the
        version the model's default route serves)."""
        monitor = self._monitor()
        pin = parse(DriftPin, await small_body(request))
        route = self.router.default_route(pin.model, pin.version)
        return json_response(monitor.pin(route.model, route.version).to_dict())

    async def routes_status(self, request: Request) -> Response:
        await self.platform.catch_up()  # the shadows' comparisons, where the platform counts them
        return json_response(self.runner.describe_routes())

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def dashboard(self, request: Request) -> Response:  # async: run on the loop, beside what it reads
        return Response(PAGE, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})

    async def no_icon(self, request: Request) -> Response:
        return Response(status_code=204, headers={"cache-control": "max-age=86400"})

    async def overview(self, request: Request) -> Response:
        return json_response(await self.summary.document())

    # --- OpenAI-compatible and billing ---------------------------------------------------------------------

    async def openai_models(self, request: Request) -> Response:
        """Models (and functions) whose signature is text -> embedding, that the caller's key opens."""
        allowed = caller(request.scope).models
        names: dict[str, Deployed | DeployedPipeline] = {}
        for name in sorted(self.router.table.models):
            names[name] = self.router.signature_function(self.router.default_route(name))
        for fdef in self.platform.functions().values():
            names.setdefault(fdef.name, fdef)
        for pipeline in self.router.pipelines.values():
            names.setdefault(pipeline.name, pipeline)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "slserve"}
            for name, fdef in names.items()
            if openai.embedding_io(fdef) is not None and (allowed is None or fdef.spec.model.name in allowed)
        ]
        return json_response({"object": "list", "data": data})

    async def usage(self, request: Request) -> Response:
        """The calling key's own usage for a month (`?month=2026-11`; default this month)."""
        key = caller(request.scope)
        month, start, end = usage.month_span(request.query_params.get("month"))
        rows = self.ledger.usage(start, end, key_id=key.key_id) if self.ledger else []
        doc = usage.report(rows, month, self.settings.currency, key_id=key.key_id, tenant=key.tenant)
        return json_response(doc)


SMALL_BODY = 64 * 1024  # what an admin command sends; more is refused before it is read


async def small_body(request: Request) -> bytes:
    """A small body; past SMALL_BODY bytes, a 413 without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > SMALL_BODY:
        raise PayloadTooLarge(f"the body is {declared} bytes; this endpoint takes at most {SMALL_BODY}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > SMALL_BODY:
            raise PayloadTooLarge(f"the body is over the {SMALL_BODY} bytes this endpoint takes")
    return body


def model_metadata(fdef: Deployed | DeployedPipeline) -> dict[str, Any]:
    spec = fdef.spec
    doc = {
        "name": fdef.name,
        "versions": [spec.model.version],
        "platform": "slserve_pipeline" if isinstance(fdef, DeployedPipeline) else PLATFORMS[fdef.spec.framework.value],
        "inputs": [t.model_dump(mode="json") for t in spec.signature.inputs],
        "outputs": [t.model_dump(mode="json") for t in spec.signature.outputs],
    }
    return doc if fdef.error is None else {**doc, "error": fdef.error}


async def _slserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SlserveError)
    return error_response(exc, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: SlserveError
    if exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}; see GET /openapi.json")
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(f"{request.method} is not allowed here; use {allow}", allow)
    else:
        error = SlserveError(str(exc.detail))
    status, body, headers = error_reply(error, request.url.path)
    return Response(body, exc.status_code if status == 500 else status, headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        SlserveError(f"internal error ({type(exc).__name__}); the server logged it"), request.url.path
    )


def build_app(
    platform: Platform,
    settings: ServeSettings,
    keys: KeyStore | None = None,
    ledger: Ledger | None = None,
    pipelines: Pipelines | None = None,
    fleet: FleetState | None = None,
    limits: Limits | None = None,
    timeline: Timelines | None = None,
    comparisons: Comparisons | None = None,
    record_address: bool = True,
) -> Front:
    """Starlette for health, metadata, status and usage; `Front` before it for keys and inference. The stores
    default to SQLite in the state folder (DynamoDB on AWS is handed in: a ledger with its fleet state); keys'
    rate and concurrency are counted in this process unless `limits` counts them for several, the dashboard's
    timeline kept here unless `timeline` keeps it for several, and shadows' comparisons unless `comparisons` does
    (front workers, whose supervisor records the gateway's address: not `record_address`)."""
    store = ArtifactStore(settings.artifacts)
    pipelines = pipelines or PipelineCatalog(store, settings.functions)
    features = CachedFeatures(SQLiteFeatureStore(settings.state / "features.sqlite"))
    monitor = drift_monitor(platform, store, settings) if settings.drift else None
    router = Router(platform.functions(), settings.routes, pipelines)
    runner = Runner(router, monitor, features, comparisons)
    keys = keys or SQLiteKeyStore(settings.state)
    if ledger is None and settings.metering:
        ledger = SQLiteLedger(settings.state / "ledger.sqlite", settings.idempotency_retention_s)
        fleet = SQLiteFleetState(settings.state / "ledger.sqlite", settings.idempotency_retention_s)
    if (ledger is None) != (fleet is None):
        raise ValueError("a gateway's ledger and fleet state come together (idempotency and quotas need both)")
    timeout_s, bill_abandoned = settings.request_timeout_s, settings.bill_abandoned
    passage = Passage(platform, runner, limits or Limiter(), ledger, fleet, timeout_s, bill_abandoned)
    metrics = Metrics(platform, runner, ledger)
    line: Timelines = timeline or Timeline()
    overview = Overview(platform, runner, line, ledger, settings.currency)
    gw = Gateway(platform, settings, runner, ledger, overview)

    routes = [Route(e.path, getattr(gw, e.handler), methods=[e.method]) for e in ENDPOINTS if not e.front]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await platform.start()
        loop = asyncio.get_running_loop()
        watchers = [
            loop.create_task(watch_changes(platform, router, pipelines)),
            loop.create_task(line.run(platform)),
            *([loop.create_task(monitor.run())] if monitor else []),
        ]
        if record_address:
            address.record(settings.state, address.client_url(settings.host, settings.port))
        try:
            yield
        finally:
            if record_address:
                address.forget(settings.state)
            for watcher in watchers:
                watcher.cancel()
            await platform.stop(settings.drain_seconds)
            if ledger is not None:
                await ledger.close()  # after the drain: every record of an answered request is written
            tracing.shutdown()  # the spans still buffered are exported

    handlers = {SlserveError: _slserve_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return Front(app, Authenticator(keys), passage, metrics, settings, line)


def drift_monitor(platform: Platform, store: ArtifactStore, settings: ServeSettings) -> DriftMonitor:
    """Drift per model version, against the reference its build profiled (read from the artifact of a function
    serving that version) unless one was pinned."""
    built: dict[str, Profile | None] = {}

    def reference(model: str, version: str) -> Profile | None:
        for f in platform.functions().values():
            if f.spec.model.name == model and f.spec.model.version == version and f.digest is not None:
                if f.digest not in built:
                    try:
                        built[f.digest] = reference_of(store.open(f.digest))
                    except SlserveError:  # not in this store (a remote target's): no build reference here
                        built[f.digest] = None
                return built[f.digest]
        return None

    thresholds = Thresholds(settings.drift_psi, settings.drift_mean_shift, settings.drift_centroid_cosine)
    return DriftMonitor(
        reference, settings.state / "drift", thresholds, settings.drift_window_s, settings.drift_min_rows
    )


async def watch_changes(
    platform: Platform, router: Router, pipelines: Pipelines | None = None, every_s: float = 1.0
) -> None:
    """Builds and route changes take effect without a restart: the table is swapped between requests, never
    during one."""
    while True:
        await asyncio.sleep(every_s)
        try:
            built = pipelines.refresh() if pipelines is not None else False
            if platform.refresh() or built:
                router.rebuild()
            else:
                router.reload_if_changed()
        except Exception:  # e.g. a folder deleted mid-scan: try again next time, never stop watching
            log.exception("could not take in changed functions or routes; retrying in %.0f s", every_s)
